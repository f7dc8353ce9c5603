//! Messages produced again because Kafka refused their batch for another record's sake,
//! and the copies that keep each key's order when that happens.
//!
//! A broker validates a produce request batch by batch: when one record is invalid (a
//! timestamp outside the topic's `message.timestamp.before.max.ms`, a record without a
//! key on a compacted topic), it refuses the whole batch and names the culprits
//! (KIP-467). librdkafka fails the culprits with their own error and their batchmates
//! with `_INVALID_DIFFERENT_RECORD`. The batchmates were good: they are produced again to
//! their own topic and partition, never dead-lettered, and the shard goes on.
//!
//! Producing again cannot put a batchmate back in its place. By the time its delivery
//! report arrives, the idempotent producer has bumped its epoch and resends the later
//! batches of that partition itself, so the batchmate lands behind later records of its
//! key. What can be restored is the order of each key's *last* copy, which is what a
//! consumer that keeps the latest value per key ends with, and what a replay after a
//! crash gives: every message of that partition that was queued before the batchmate was
//! produced again, and is reported delivered after the refusal, is produced again behind
//! it (a duplicate, as after any replay), and its record counts as acknowledged only when
//! that copy is. A checkpoint therefore never passes a record whose last copy could still
//! be out of order.
//!
//! Which messages were queued before a batchmate was produced again is told by a
//! generation number carried in every message's delivery opaque next to its record id:
//! each produce-again starts a generation, and a message of an older generation
//! delivered to that partition afterwards is copied. A partition's watch ends once every
//! record queued before its last produce-again is resolved.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::checkpoint::RecordId;

/// Bits of the delivery opaque that carry the record id; the rest carry the generation.
/// 2^40 records is far more than one child ever tracks.
const ID_BITS: u32 = 40;
const ID_MASK: usize = (1 << ID_BITS) - 1;
const MAX_GENERATION: usize = usize::MAX >> ID_BITS;

/// How often one message is produced again because its batch was refused for another
/// record. Each time, the culprits of its batch are gone (dead-lettered or failed), so
/// this is reached only if new invalid records keep joining its batch.
pub const MAX_ATTEMPTS: u32 = 10;

/// The delivery opaque of a message: its record id and the generation it was queued in.
pub fn opaque(id: RecordId, generation: usize) -> usize {
    (generation.min(MAX_GENERATION) << ID_BITS) | (id & ID_MASK)
}

/// The record id and generation of a delivery opaque.
pub fn split_opaque(opaque: usize) -> (RecordId, usize) {
    (opaque & ID_MASK, opaque >> ID_BITS)
}

/// One partition where batchmates were produced again.
struct Watch {
    /// The lowest record id refused here: messages of earlier records were appended
    /// before the refused batch and keep their place.
    from: RecordId,
    /// Refused batchmates reported but not yet produced again by the session: until they
    /// are, the delivery thread cannot tell what they will overtake.
    pending: usize,
    /// Every produce-again here, in order: (generation, record id).
    again: Vec<(usize, RecordId)>,
    /// The first record id tracked after the last produce-again. Once every record
    /// below it is resolved, nothing queued before a produce-again is left.
    until: RecordId,
}

impl Watch {
    fn new(from: RecordId) -> Watch {
        Watch {
            from,
            pending: 0,
            again: Vec::new(),
            until: 0,
        }
    }

    /// A message of record `id` queued in `generation` sits ahead of a message of an
    /// earlier record that was produced again after it was queued: copy it behind.
    fn overtook(&self, id: RecordId, generation: usize) -> bool {
        self.again
            .iter()
            .rev()
            .take_while(|(g, _)| *g > generation)
            .any(|(_, earlier)| *earlier < id)
    }
}

/// What the delivery thread should do with a message Kafka reported delivered.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivered {
    Acknowledge,
    /// Hand it to the session, which knows every produce-again and decides with
    /// [`ProduceAgain::copy`].
    Ask,
}

/// Shared by the delivery thread (which opens watches and asks about each delivery) and
/// the session (which produces again, starts generations and closes watches).
#[derive(Default)]
pub struct ProduceAgain {
    /// Whether any watch is open: the per-message check is this one atomic read.
    watching: AtomicBool,
    generation: AtomicUsize,
    watches: Mutex<HashMap<(String, i32), Watch>>,
}

impl ProduceAgain {
    /// The generation to stamp on a message queued now.
    pub fn generation(&self) -> usize {
        self.generation.load(Ordering::Acquire)
    }

    fn watches(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), Watch>> {
        // Every update is a few field writes: the map stays consistent after a panic.
        self.watches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Delivery thread: a message of record `id` was refused for a batchmate's sake and
    /// goes to the session to be produced again. From now on, later messages delivered
    /// to its partition are looked at.
    pub fn refused_batchmate(&self, topic: &str, partition: i32, id: RecordId) {
        let mut watches = self.watches();
        let watch = watches
            .entry((topic.to_owned(), partition))
            .or_insert_with(|| Watch::new(id));
        watch.from = watch.from.min(id);
        watch.pending += 1;
        self.watching.store(true, Ordering::Release);
    }

    /// Delivery thread: what to do with a message Kafka reported delivered.
    pub fn delivered(&self, topic: &str, partition: i32, opaque: usize) -> Delivered {
        if !self.watching.load(Ordering::Acquire) {
            return Delivered::Acknowledge;
        }
        let (id, generation) = split_opaque(opaque);
        let watches = self.watches();
        match watches.get(&(topic.to_owned(), partition)) {
            Some(w) if id > w.from && (w.pending > 0 || w.overtook(id, generation)) => {
                Delivered::Ask
            }
            _ => Delivered::Acknowledge,
        }
    }

    /// Session: a refused batchmate of record `id` is about to be produced again to
    /// `partition`; `next_id` is the id the next tracked record will get. Returns the
    /// generation to stamp on it.
    pub fn producing_again(
        &self,
        topic: &str,
        partition: i32,
        id: RecordId,
        next_id: RecordId,
    ) -> usize {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let mut watches = self.watches();
        let watch = watches
            .entry((topic.to_owned(), partition))
            .or_insert_with(|| Watch::new(id));
        watch.pending = watch.pending.saturating_sub(1);
        watch.again.push((generation, id));
        watch.until = next_id;
        self.watching.store(true, Ordering::Release);
        generation
    }

    /// Session: a refused batchmate will not be produced again (it failed for good).
    pub fn given_up(&self, topic: &str, partition: i32) {
        if let Some(w) = self.watches().get_mut(&(topic.to_owned(), partition)) {
            w.pending = w.pending.saturating_sub(1);
        }
    }

    /// Session: whether a delivered message the delivery thread asked about must be
    /// copied (it sits ahead of an earlier record produced again after it was queued),
    /// or only acknowledged.
    pub fn copy(&self, topic: &str, partition: i32, opaque: usize) -> bool {
        let (id, generation) = split_opaque(opaque);
        self.watches()
            .get(&(topic.to_owned(), partition))
            .is_some_and(|w| id > w.from && w.overtook(id, generation))
    }

    /// Session: ends the watches with nothing pending whose records queued before their
    /// last produce-again are all resolved (`first_unresolved`: the oldest record still
    /// in flight, or the next id when none is). Returns how many remain.
    pub fn close_settled(&self, first_unresolved: RecordId) -> usize {
        let mut watches = self.watches();
        watches.retain(|_, w| w.pending > 0 || w.until > first_unresolved);
        if watches.is_empty() {
            self.watching.store(false, Ordering::Release);
        }
        watches.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_opaque_carries_id_and_generation() {
        assert_eq!(split_opaque(opaque(0, 0)), (0, 0));
        assert_eq!(split_opaque(opaque(123_456, 7)), (123_456, 7));
        assert_eq!(split_opaque(opaque(ID_MASK, 1)), (ID_MASK, 1));
        // A generation past the range saturates instead of wrapping to an old one.
        assert_eq!(split_opaque(opaque(5, usize::MAX)), (5, MAX_GENERATION));
    }

    #[test]
    fn nothing_is_copied_until_a_batch_is_refused() {
        let again = ProduceAgain::default();
        assert_eq!(
            again.delivered("t", 0, opaque(9, 0)),
            Delivered::Acknowledge
        );
        assert!(!again.copy("t", 0, opaque(9, 0)));
    }

    #[test]
    fn later_messages_queued_before_the_produce_again_are_copied_behind_it() {
        let again = ProduceAgain::default();
        // Records 0..10 queued in generation 0; record 3 was a refused batchmate.
        again.refused_batchmate("t", 1, 3);
        // Until the session produces it again, later deliveries there are asked about.
        assert_eq!(again.delivered("t", 1, opaque(5, 0)), Delivered::Ask);
        // Earlier records, other partitions and other topics keep their place.
        assert_eq!(
            again.delivered("t", 1, opaque(2, 0)),
            Delivered::Acknowledge
        );
        assert_eq!(
            again.delivered("t", 2, opaque(5, 0)),
            Delivered::Acknowledge
        );
        assert_eq!(
            again.delivered("u", 1, opaque(5, 0)),
            Delivered::Acknowledge
        );
        let generation = again.producing_again("t", 1, 3, 10);
        assert_eq!(generation, 1);
        assert_eq!(again.generation(), 1);
        // Queued before it: copied. Queued after it (its own copy, or new records): not.
        assert!(again.copy("t", 1, opaque(5, 0)));
        assert_eq!(again.delivered("t", 1, opaque(5, 0)), Delivered::Ask);
        assert_eq!(
            again.delivered("t", 1, opaque(5, 1)),
            Delivered::Acknowledge
        );
        assert!(!again.copy("t", 1, opaque(3, 1)));
        assert_eq!(
            again.delivered("t", 1, opaque(11, 1)),
            Delivered::Acknowledge
        );
        // Records below 10 still unresolved: the watch stays.
        assert_eq!(again.close_settled(4), 1);
        assert_eq!(again.delivered("t", 1, opaque(6, 0)), Delivered::Ask);
        // All resolved: the watch ends and the fast path is back.
        assert_eq!(again.close_settled(10), 0);
        assert_eq!(
            again.delivered("t", 1, opaque(6, 0)),
            Delivered::Acknowledge
        );
    }

    #[test]
    fn only_what_an_earlier_record_was_produced_behind_is_copied() {
        let again = ProduceAgain::default();
        // Records 3 and 4 refused together; produced again in generations 1 and 2.
        again.refused_batchmate("t", 0, 3);
        again.refused_batchmate("t", 0, 4);
        assert_eq!(again.producing_again("t", 0, 3, 10), 1);
        // Record 4 is still pending: every later delivery is asked about.
        assert_eq!(again.delivered("t", 0, opaque(4, 1)), Delivered::Ask);
        assert_eq!(again.producing_again("t", 0, 4, 10), 2);
        // Record 3's new message (generation 1) sits behind 3 and ahead of 4's: in order.
        assert!(!again.copy("t", 0, opaque(3, 1)));
        // Record 4's new message was queued after both: in order.
        assert!(!again.copy("t", 0, opaque(4, 2)));
        // Record 7 queued before either (generation 0): copied.
        assert!(again.copy("t", 0, opaque(7, 0)));
        // A copy of record 7 made in generation 1 would sit ahead of record 4's: copied.
        assert!(again.copy("t", 0, opaque(7, 1)));
        assert!(!again.copy("t", 0, opaque(7, 2)));
    }

    #[test]
    fn a_second_refusal_moves_the_generation_on() {
        let again = ProduceAgain::default();
        again.refused_batchmate("t", 0, 3);
        again.producing_again("t", 0, 3, 10);
        // Record 12 (queued after the first produce-again) is refused in turn.
        again.refused_batchmate("t", 0, 12);
        let second = again.producing_again("t", 0, 12, 20);
        assert_eq!(second, 2);
        // Record 14's message queued in generation 1 sits ahead of record 12's second
        // try; record 5's does not (5 < 12), nor does record 4's copy.
        assert!(again.copy("t", 0, opaque(14, 1)));
        assert!(!again.copy("t", 0, opaque(5, 1)));
        assert!(!again.copy("t", 0, opaque(14, 2)));
        assert_eq!(again.close_settled(19), 1);
        assert_eq!(again.close_settled(20), 0);
    }

    #[test]
    fn a_watch_stays_while_a_refusal_is_pending() {
        let again = ProduceAgain::default();
        again.refused_batchmate("t", 0, 3);
        assert_eq!(again.close_settled(100), 1);
        again.given_up("t", 0);
        assert_eq!(again.close_settled(100), 0);
    }
}
