//! The acknowledged frontier: the highest Kinesis position that is safe to checkpoint.
//!
//! A position is safe when its record and every record before it in the shard have been
//! acknowledged by Kafka. Acknowledgements arrive out of order (different partitions,
//! different brokers), so the tracker keeps the records in flight in shard order and
//! advances the frontier over the longest fully acknowledged prefix.
//!
//! One Kinesis record may become several Kafka messages, or none; it is done when all of
//! its messages are acknowledged. A record that Kafka refuses for good is never done, so
//! the frontier can never pass it.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A position in a shard: (sequence number, sub-sequence number).
///
/// Sequence numbers are decimal strings of up to 128 digits (56 in practice), too large
/// for any integer type, so they are compared as numbers written in decimal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub sequence_number: Box<str>,
    pub sub_sequence_number: i64,
}

impl Position {
    pub fn new(sequence_number: &str, sub_sequence_number: i64) -> Self {
        Position {
            sequence_number: sequence_number.into(),
            sub_sequence_number,
        }
    }
}

/// Compares two non-negative decimal integers written as strings.
pub fn compare_decimal(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_decimal(&self.sequence_number, &other.sequence_number)
            .then(self.sub_sequence_number.cmp(&other.sub_sequence_number))
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.sequence_number, self.sub_sequence_number)
    }
}

/// Identifies a tracked record; carried as the delivery opaque of each of its messages.
pub type RecordId = usize;

/// A record that Kafka refused for good.
#[derive(Debug, Clone)]
pub struct DeliveryFailure {
    pub position: Option<Position>,
    pub reason: String,
}

impl fmt::Display for DeliveryFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.position {
            Some(p) => write!(
                f,
                "sequence number {} sub-sequence {}: {}",
                p.sequence_number, p.sub_sequence_number, self.reason
            ),
            None => write!(f, "a record without a sequence number: {}", self.reason),
        }
    }
}

struct Slot {
    /// `None` when the daemon sent no sequence number: such a record cannot be a
    /// checkpoint itself, but it still holds back every record after it.
    position: Option<Position>,
    /// Kafka messages of this record not yet acknowledged.
    outstanding: u32,
    bytes: usize,
    failed: bool,
    /// When the record reached Kinesis (ms since the epoch), for the replication latency.
    arrival_ms: Option<i64>,
}

struct Inner {
    /// The id of `slots[0]`. Ids are consecutive, so a slot is found by subtraction.
    first_id: RecordId,
    slots: VecDeque<Slot>,
    frontier: Option<Position>,
    in_flight_bytes: usize,
    acknowledged_messages: u64,
    failure: Option<DeliveryFailure>,
    /// Threads in `wait_until`. Waking costs a system call, and there is an acknowledgement
    /// per message: wake only when someone waits.
    waiters: usize,
}

/// Shared between the session (which adds records) and librdkafka's delivery thread
/// (which acknowledges them). Waiters are woken on every change.
pub struct Frontier {
    inner: Mutex<Inner>,
    changed: Condvar,
}

/// What is in flight, for logs and for the conditions waited on. The frontier itself and
/// a failure are read with [`Frontier::frontier`] and [`Frontier::failure`].
#[derive(Debug, Clone, Copy)]
pub struct FrontierState {
    pub in_flight_records: usize,
    pub in_flight_bytes: usize,
    pub acknowledged_messages: u64,
}

impl Default for Frontier {
    fn default() -> Self {
        Self::new()
    }
}

impl Frontier {
    pub fn new() -> Self {
        Frontier {
            inner: Mutex::new(Inner {
                first_id: 0,
                slots: VecDeque::new(),
                frontier: None,
                in_flight_bytes: 0,
                acknowledged_messages: 0,
                failure: None,
                waiters: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug in this module; the state itself
        // stays consistent (every update is a few field writes), so keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts tracking a record that will be sent as `messages` Kafka messages of
    /// `bytes` in total. A record with no messages is done at once.
    pub fn track(&self, position: Option<Position>, messages: u32, bytes: usize) -> RecordId {
        self.track_arrived(position, messages, bytes, None)
    }

    /// [`Self::track`] for a record that reached Kinesis at `arrival_ms`: its
    /// acknowledgement reports it (see [`Self::acknowledge`]).
    pub fn track_arrived(
        &self,
        position: Option<Position>,
        messages: u32,
        bytes: usize,
        arrival_ms: Option<i64>,
    ) -> RecordId {
        let mut inner = self.lock();
        let id = inner.first_id + inner.slots.len();
        inner.slots.push_back(Slot {
            position,
            outstanding: messages,
            bytes,
            failed: false,
            arrival_ms,
        });
        inner.in_flight_bytes += bytes;
        if messages == 0 {
            inner.advance();
        }
        id
    }

    /// One message of record `id` is acknowledged by Kafka. When that was the record's
    /// last message, returns `Some` with its arrival time (if known).
    pub fn acknowledge(&self, id: RecordId) -> Option<Option<i64>> {
        let mut inner = self.lock();
        inner.acknowledged_messages += 1;
        let index = id.checked_sub(inner.first_id)?;
        let slot = inner.slots.get_mut(index)?;
        if slot.outstanding == 0 {
            return None;
        }
        slot.outstanding -= 1;
        if slot.outstanding > 0 {
            return None;
        }
        let arrival = slot.arrival_ms;
        // Only the front finishing changes what waiters look at (what is in flight).
        if index == 0 {
            inner.advance();
            let wake = inner.waiters > 0;
            drop(inner);
            if wake {
                self.changed.notify_all();
            }
        }
        Some(arrival)
    }

    /// Nothing in flight will ever be delivered (the producer hit a fatal error and purged
    /// its queue): the oldest record in flight fails, so the frontier stops before it and
    /// every wait ends. With nothing in flight the failure stands alone, and the next
    /// check ends the child all the same.
    pub fn fail_in_flight(&self, reason: String) {
        let mut inner = self.lock();
        let position = inner.slots.front_mut().map(|slot| {
            slot.failed = true;
            slot.position.clone()
        });
        if inner.failure.is_none() {
            inner.failure = Some(DeliveryFailure {
                position: position.flatten(),
                reason,
            });
        }
        drop(inner);
        self.changed.notify_all();
    }

    /// Record `id` will never be delivered. The frontier stops before it for good.
    pub fn fail(&self, id: RecordId, reason: String) {
        let mut inner = self.lock();
        if let Some(index) = id.checked_sub(inner.first_id) {
            if let Some(slot) = inner.slots.get_mut(index) {
                slot.failed = true;
                let position = slot.position.clone();
                if inner.failure.is_none() {
                    inner.failure = Some(DeliveryFailure { position, reason });
                }
            }
        }
        drop(inner);
        self.changed.notify_all();
    }

    /// The oldest record still in flight (or the next id, when none is) and the id the
    /// next tracked record gets.
    pub fn id_range(&self) -> (RecordId, RecordId) {
        let inner = self.lock();
        (inner.first_id, inner.first_id + inner.slots.len())
    }

    /// The position of a record still in flight.
    pub fn position(&self, id: RecordId) -> Option<Position> {
        let inner = self.lock();
        let index = id.checked_sub(inner.first_id)?;
        inner
            .slots
            .get(index)
            .and_then(|slot| slot.position.clone())
    }

    /// Wakes the waiters without a change of state (e.g. a message to produce again).
    pub fn wake(&self) {
        self.changed.notify_all();
    }

    pub fn state(&self) -> FrontierState {
        self.lock().state()
    }

    /// Records and payload bytes in flight, and whether a delivery failure is recorded: the
    /// cheap check made after every record, under one lock.
    pub fn in_flight(&self) -> (usize, usize, bool) {
        let inner = self.lock();
        (
            inner.slots.len(),
            inner.in_flight_bytes,
            inner.failure.is_some(),
        )
    }

    pub fn frontier(&self) -> Option<Position> {
        self.lock().frontier.clone()
    }

    pub fn failure(&self) -> Option<DeliveryFailure> {
        self.lock().failure.clone()
    }

    /// Waits until `done` holds for the current state, a failure is recorded, or the
    /// timeout passes. Returns whether `done` holds.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&FrontierState) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            if done(&inner.state()) {
                return true;
            }
            if inner.failure.is_some() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            inner.waiters += 1;
            inner = match self.changed.wait_timeout(inner, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
            inner.waiters -= 1;
        }
    }
}

impl Inner {
    fn state(&self) -> FrontierState {
        FrontierState {
            in_flight_records: self.slots.len(),
            in_flight_bytes: self.in_flight_bytes,
            acknowledged_messages: self.acknowledged_messages,
        }
    }

    /// Pops the finished prefix and moves the frontier to its last positioned record.
    fn advance(&mut self) {
        while let Some(slot) = self.slots.front() {
            if slot.outstanding > 0 || slot.failed {
                break;
            }
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            self.first_id += 1;
            self.in_flight_bytes -= slot.bytes;
            if let Some(position) = slot.position {
                // Kinesis positions only grow within a shard, but a replayed or
                // reordered batch must never move a checkpoint backwards.
                if self.frontier.as_ref().is_none_or(|f| position > *f) {
                    self.frontier = Some(position);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(seq: &str, sub: i64) -> Option<Position> {
        Some(Position::new(seq, sub))
    }

    #[test]
    fn decimal_comparison_is_numeric() {
        assert_eq!(compare_decimal("9", "10"), Ordering::Less);
        assert_eq!(compare_decimal("0010", "10"), Ordering::Equal);
        assert_eq!(
            compare_decimal(
                "49590338271490256608559692538361571095921575989136588898",
                "49590338271490256608559692538361571095921575989136588899"
            ),
            Ordering::Less
        );
        assert!(Position::new("5", 3) < Position::new("5", 4));
        assert!(Position::new("5", 9) < Position::new("6", 0));
    }

    #[test]
    fn frontier_moves_only_over_a_fully_acknowledged_prefix() {
        let f = Frontier::new();
        let a = f.track(pos("1", 0), 1, 10);
        let b = f.track(pos("2", 0), 1, 10);
        let c = f.track(pos("3", 0), 1, 10);
        f.acknowledge(c);
        f.acknowledge(b);
        assert_eq!(f.frontier(), None, "record 1 is not acknowledged yet");
        f.acknowledge(a);
        assert_eq!(f.frontier(), pos("3", 0));
        let state = f.state();
        assert_eq!(state.in_flight_records, 0);
        assert_eq!(state.in_flight_bytes, 0);
    }

    #[test]
    fn a_failed_record_stops_the_frontier_for_good() {
        let f = Frontier::new();
        let a = f.track(pos("1", 0), 1, 1);
        let b = f.track(pos("2", 0), 1, 1);
        let c = f.track(pos("3", 0), 1, 1);
        f.acknowledge(a);
        f.fail(b, "too large".into());
        f.acknowledge(c);
        assert_eq!(f.frontier(), pos("1", 0));
        let failure = f.failure().unwrap();
        assert_eq!(failure.position, pos("2", 0));
        assert!(!f.wait_until(Duration::from_secs(5), |s| s.in_flight_records == 0));
    }

    #[test]
    fn records_of_many_messages_or_none() {
        let f = Frontier::new();
        let a = f.track(pos("1", 0), 3, 1);
        let _none = f.track(pos("1", 1), 0, 0);
        let c = f.track(pos("2", 0), 1, 1);
        f.acknowledge(a);
        f.acknowledge(a);
        f.acknowledge(c);
        assert_eq!(f.frontier(), None, "one message of record 1/0 is in flight");
        f.acknowledge(a);
        assert_eq!(f.frontier(), pos("2", 0));
    }

    #[test]
    fn a_record_without_position_holds_back_later_ones() {
        let f = Frontier::new();
        let a = f.track(pos("1", 0), 1, 1);
        let b = f.track(None, 1, 1);
        let c = f.track(pos("3", 0), 1, 1);
        f.acknowledge(a);
        f.acknowledge(c);
        assert_eq!(f.frontier(), pos("1", 0));
        f.acknowledge(b);
        assert_eq!(f.frontier(), pos("3", 0));
    }

    #[test]
    fn acknowledgements_from_another_thread_wake_a_waiter() {
        let f = std::sync::Arc::new(Frontier::new());
        let ids: Vec<_> = (1..=100)
            .map(|i| f.track(pos(&i.to_string(), 0), 1, 1))
            .collect();
        let acker = {
            let f = f.clone();
            std::thread::spawn(move || {
                for id in ids.into_iter().rev() {
                    f.acknowledge(id);
                }
            })
        };
        assert!(f.wait_until(Duration::from_secs(10), |s| s.in_flight_records == 0));
        acker.join().unwrap();
        assert_eq!(f.frontier(), pos("100", 0));
    }
}
