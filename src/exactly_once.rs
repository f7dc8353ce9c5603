//! Exactly-once delivery (`DELIVERY_GUARANTEE=exactly_once`): what a shard has committed,
//! and when the open span of records is due for its commit.
//!
//! Each span of records goes into one Kafka transaction together with the shard's
//! position record ([`crate::positions`]), so the records and the position become visible
//! to read_committed consumers at once or not at all. At `initialize`, the shard's last
//! committed position is read back: the records up to it are in Kafka already (a crash
//! between a commit and the daemon's checkpoint) and are skipped. The daemon is asked to
//! checkpoint only committed positions, so its checkpoint never passes Kafka.
//!
//! The flow lives in [`crate::replicator`]; this module keeps the state it acts on.

use std::time::{Duration, Instant};

use crate::checkpoint::Position;
use crate::config::Config;

pub struct ExactlyOnce {
    pub transactional_id: String,
    /// Records at or below it are in Kafka already (read from the positions topic).
    resume_after: Option<Position>,
    /// The last position whose transaction committed (or the resume point): the only
    /// position the daemon is asked to checkpoint.
    committed: Option<Position>,
    span: Span,
    max_records: usize,
    max_bytes: usize,
    max_age: Duration,
}

/// The records produced since the last commit.
#[derive(Default)]
struct Span {
    records: usize,
    bytes: usize,
    started: Option<Instant>,
    /// The last positioned record of the span: what its commit records.
    last: Option<Position>,
}

impl ExactlyOnce {
    pub fn new(config: &Config, shard_id: &str) -> ExactlyOnce {
        ExactlyOnce {
            transactional_id: config.transactional_id(shard_id),
            resume_after: None,
            committed: None,
            span: Span::default(),
            max_records: config.delivery.transaction_max_records,
            max_bytes: config.delivery.transaction_max_bytes,
            max_age: config.transaction_max_age(),
        }
    }

    /// Where the shard resumes: the later of the positions topic's position and the
    /// daemon's checkpoint (which is later after a switch from at-least-once).
    pub fn resume(
        &mut self,
        from_positions_topic: Option<Position>,
        checkpoint: Option<&Position>,
    ) {
        let resume = match (from_positions_topic, checkpoint) {
            (Some(p), Some(c)) if *c > p => Some(c.clone()),
            (Some(p), _) => Some(p),
            (None, c) => c.cloned(),
        };
        self.resume_after = resume.clone();
        self.committed = resume;
    }

    /// Whether this record is in Kafka already, committed by an earlier owner of the shard.
    pub fn already_committed(&self, position: Option<&Position>) -> bool {
        matches!((position, &self.resume_after), (Some(p), Some(r)) if p <= r)
    }

    /// A record joined the open span.
    pub fn add(&mut self, position: Option<Position>, bytes: usize) {
        let span = &mut self.span;
        span.records += 1;
        span.bytes += bytes;
        span.started.get_or_insert_with(Instant::now);
        if position.is_some() {
            span.last = position;
        }
    }

    /// Whether the span is full (records, bytes) or old enough to be committed now.
    pub fn due(&self) -> bool {
        let span = &self.span;
        span.records >= self.max_records
            || span.bytes >= self.max_bytes
            || span.started.is_some_and(|s| s.elapsed() >= self.max_age)
    }

    /// At the end of a batch: due, or the shard is caught up (the batch's records would
    /// otherwise wait for the next batch to become readable).
    pub fn due_at_batch_end(&self, millis_behind_latest: Option<i64>) -> bool {
        let caught_up =
            millis_behind_latest.is_none_or(|behind| behind < self.max_age.as_millis() as i64);
        !self.is_empty() && (caught_up || self.due())
    }

    pub fn is_empty(&self) -> bool {
        self.span.records == 0
    }

    /// What the open span's commit will record (`None`: no record of it has a position;
    /// its commit records the last committed one again).
    pub fn span_position(&self) -> Option<&Position> {
        self.span.last.as_ref().or(self.committed.as_ref())
    }

    pub fn span_records(&self) -> usize {
        self.span.records
    }

    /// The open span committed.
    pub fn committed_span(&mut self) {
        if let Some(last) = self.span.last.take() {
            if self.committed.as_ref().is_none_or(|c| last > *c) {
                self.committed = Some(last);
            }
        }
        self.span = Span::default();
    }

    /// The open span was aborted: none of it is in Kafka.
    pub fn aborted_span(&mut self) {
        self.span = Span::default();
    }

    pub fn committed(&self) -> Option<&Position> {
        self.committed.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_template(
            &format!(
                r#"{{"kafka":{{"bootstrap_servers":"b:1","topic":"t"}},"delivery":{{"guarantee":"exactly_once","application_name":"app"{extra}}}}}"#
            ),
            |_| None,
        )
        .unwrap()
    }

    fn pos(s: &str) -> Position {
        Position::new(s, 0)
    }

    #[test]
    fn names_derive_from_the_application() {
        let c = config("");
        assert_eq!(
            c.transactional_id("shardId-000000000002"),
            "app-shardId-000000000002"
        );
        assert_eq!(c.positions_topic(), "app.positions");
        let c = config(r#","transactional_id_prefix":"kkr-","positions_topic":"p""#);
        assert_eq!(c.transactional_id("s"), "kkr-s");
        assert_eq!(c.positions_topic(), "p");
    }

    #[test]
    fn the_resume_point_is_the_later_of_the_positions_topic_and_the_checkpoint() {
        let c = config("");
        let mut eos = ExactlyOnce::new(&c, "s");
        eos.resume(Some(pos("20")), Some(&pos("10")));
        assert!(eos.already_committed(Some(&pos("20"))));
        assert!(!eos.already_committed(Some(&pos("21"))));
        assert!(!eos.already_committed(None));
        assert_eq!(eos.committed(), Some(&pos("20")));
        eos.resume(Some(pos("20")), Some(&pos("30")));
        assert_eq!(eos.committed(), Some(&pos("30")));
        eos.resume(None, None);
        assert!(!eos.already_committed(Some(&pos("1"))));
    }

    #[test]
    fn a_span_is_due_by_records_bytes_or_age_and_commits_its_last_position() {
        let c = config(
            r#","transaction_max_records":3,"transaction_max_bytes":100,"transaction_max_seconds":0.05"#,
        );
        let mut eos = ExactlyOnce::new(&c, "s");
        assert!(!eos.due() && eos.is_empty());
        eos.add(Some(pos("1")), 10);
        eos.add(None, 10);
        assert!(!eos.due());
        assert_eq!(eos.span_position(), Some(&pos("1")));
        eos.add(Some(pos("3")), 10);
        assert!(eos.due(), "three records");
        eos.committed_span();
        assert_eq!(eos.committed(), Some(&pos("3")));
        eos.add(Some(pos("4")), 100);
        assert!(eos.due(), "100 bytes");
        eos.aborted_span();
        assert_eq!(eos.committed(), Some(&pos("3")), "an abort commits nothing");
        eos.add(Some(pos("4")), 1);
        assert!(!eos.due());
        std::thread::sleep(Duration::from_millis(60));
        assert!(eos.due(), "older than transaction_max_seconds");
    }

    #[test]
    fn a_batch_end_commits_when_caught_up_or_due() {
        let c = config(r#","transaction_max_seconds":5"#);
        let mut eos = ExactlyOnce::new(&c, "s");
        assert!(!eos.due_at_batch_end(Some(0)), "nothing to commit");
        eos.add(Some(pos("1")), 1);
        assert!(eos.due_at_batch_end(Some(0)));
        assert!(eos.due_at_batch_end(None));
        assert!(
            !eos.due_at_batch_end(Some(60_000)),
            "behind: the span grows"
        );
    }
}
