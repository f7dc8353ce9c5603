//! The stock binary: the command line of [`kinesis_kafka_replicator::cli`] with the
//! configured processing stage and no custom transform.

fn main() {
    kinesis_kafka_replicator::cli::main(None)
}
