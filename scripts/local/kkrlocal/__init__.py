"""The replicator's whole pipeline on one machine, loopback only: the KCL MultiLangDaemon from
jars/pom.xml, kinesis-local for Kinesis, moto for DynamoDB, and an Apache Kafka broker.
Used by `run.sh --local` (quickstart.py) and by the end-to-end tests (tests/e2e/)."""
