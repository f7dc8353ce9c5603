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
use crate::positions::{self, Committed, DeadLettered};

pub struct ExactlyOnce {
    pub transactional_id: String,
    /// Records at or below it are in Kafka already (read from the positions topic).
    resume_after: Option<Position>,
    /// The last position whose transaction committed (or the resume point): the only
    /// position the daemon is asked to checkpoint.
    committed: Option<Position>,
    /// Messages after `committed` that are in the dead-letter topic already: the broker
    /// refused them, and their transaction was aborted. The replay skips them; every
    /// position record names them until the position passes them.
    dead_lettered: DeadLettered,
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
            dead_lettered: DeadLettered::new(),
            span: Span::default(),
            max_records: config.delivery.transaction_max_records,
            max_bytes: config.delivery.transaction_max_bytes,
            max_age: config.transaction_max_age(),
        }
    }

    /// Where the shard resumes: the later of the positions topic's position and the
    /// daemon's checkpoint (which is later after a switch from at-least-once).
    pub fn resume(&mut self, from_positions_topic: Committed, checkpoint: Option<&Position>) {
        let resume = match (from_positions_topic.position, checkpoint) {
            (Some(p), Some(c)) if *c > p => Some(c.clone()),
            (Some(p), _) => Some(p),
            (None, c) => c.cloned(),
        };
        self.dead_lettered = from_positions_topic.dead_lettered;
        if let Some(resume) = &resume {
            self.dead_lettered.retain(|(p, _)| p > resume);
        }
        self.resume_after = resume.clone();
        self.committed = resume;
    }

    /// Whether message `index` of the record at `position` is in the dead-letter topic
    /// already (the replay after a transaction aborted for it).
    pub fn dead_lettered(&self, position: Option<&Position>, index: usize) -> bool {
        !self.dead_lettered.is_empty()
            && position.is_some_and(|p| self.dead_lettered.contains(&(p.clone(), index)))
    }

    /// Whether any message is to be skipped as dead-lettered (a cheap check per record).
    pub fn has_dead_letters(&self) -> bool {
        !self.dead_lettered.is_empty()
    }

    /// The value of the position record the open span commits with.
    pub fn position_value(&self, shard_id: &str) -> Vec<u8> {
        positions::encode(shard_id, self.span_position(), &self.dead_lettered)
    }

    /// The value of a position record that keeps the committed position and adds
    /// `more` dead-lettered messages: written with them, after an abort.
    pub fn dead_letter_value(&self, shard_id: &str, more: &DeadLettered) -> Vec<u8> {
        let mut all = self.dead_lettered.clone();
        all.extend(more.iter().cloned());
        positions::encode(shard_id, self.committed.as_ref(), &all)
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
                self.dead_lettered.retain(|(p, _)| *p > last);
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

    fn committed(position: Option<&str>) -> Committed {
        Committed {
            position: position.map(pos),
            dead_lettered: DeadLettered::new(),
        }
    }

    #[test]
    fn dead_lettered_messages_are_skipped_on_replay_until_the_position_passes_them() {
        let c = config("");
        let mut eos = ExactlyOnce::new(&c, "s");
        let stored = Committed {
            position: Some(pos("10")),
            dead_lettered: [(pos("5"), 0), (pos("12"), 1), (pos("15"), 0)]
                .into_iter()
                .collect(),
        };
        eos.resume(stored, None);
        assert!(eos.has_dead_letters());
        assert!(
            !eos.dead_lettered(Some(&pos("5")), 0),
            "at or before the position: gone"
        );
        assert!(eos.dead_lettered(Some(&pos("12")), 1));
        assert!(
            !eos.dead_lettered(Some(&pos("12")), 0),
            "another message of the record"
        );
        assert!(!eos.dead_lettered(None, 0));
        // Named by every position record until a commit passes them.
        eos.add(Some(pos("13")), 1);
        let value = String::from_utf8(eos.position_value("s")).unwrap();
        assert!(value.contains("\"15\""), "{value}");
        assert!(!value.contains("\"12\""), "{value}");
        eos.committed_span();
        assert!(eos.dead_lettered(Some(&pos("15")), 0));
        assert!(!eos.dead_lettered(Some(&pos("12")), 1));
        let more: DeadLettered = [(pos("20"), 0)].into_iter().collect();
        let value = String::from_utf8(eos.dead_letter_value("s", &more)).unwrap();
        assert!(
            value.contains("\"sequence_number\":\"13\"")
                && value.contains("\"20\"")
                && value.contains("\"15\""),
            "{value}"
        );
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
        eos.resume(committed(Some("20")), Some(&pos("10")));
        assert!(eos.already_committed(Some(&pos("20"))));
        assert!(!eos.already_committed(Some(&pos("21"))));
        assert!(!eos.already_committed(None));
        assert_eq!(eos.committed(), Some(&pos("20")));
        eos.resume(committed(Some("20")), Some(&pos("30")));
        assert_eq!(eos.committed(), Some(&pos("30")));
        eos.resume(Committed::default(), None);
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
