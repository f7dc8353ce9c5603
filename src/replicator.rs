//! What the processor does at each step of a shard's life: produce every record, and
//! checkpoint only what Kafka has acknowledged.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use log::{error, info, warn};

use crate::checkpoint::{Frontier, FrontierState, Position};
use crate::config::{Config, OnInvalid};
use crate::exactly_once::ExactlyOnce;
use crate::kafka::{KafkaSink, TxnError};
use crate::logging;
use crate::metrics::{Metrics, ShardState};
use crate::positions;
use crate::protocol::{DaemonMessage, Record};
use crate::session::{Channel, CheckpointResult, Fatal, Handler};
use crate::transform::{recycle, KafkaMessage, KinesisRecord, Pipeline};

/// How long one wait slice lasts: the longest the processor goes without looking at
/// failures, timed-out messages, a due checkpoint or a due log line.
const WAIT_SLICE: Duration = Duration::from_millis(100);
/// How often a long wait for Kafka says so.
const WAITING_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// One attempt of a transactional call (exactly-once): a call that times out is made
/// again, saying so, until it succeeds, the transaction must be aborted, or the daemon goes.
const TRANSACTION_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `initialize` may take to fence the previous owner and read the shard's
/// position before the child gives up and the daemon tries again.
const EXACTLY_ONCE_START_TIMEOUT: Duration = Duration::from_secs(120);

/// Clears the shard's waiting-for-Kafka state when a wait ends.
struct Waiting(Arc<Metrics>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.set_waiting(false);
    }
}

/// Whether a wait checkpoints the frontier as it moves (every `CHECKPOINT_FREQ_SECONDS`),
/// as during `processRecords`, or only once at its end, as at shutdown and shard end.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Checkpoints {
    Periodic,
    AtTheEnd,
}

pub struct Replicator {
    config: Config,
    shard_id: String,
    frontier: Arc<Frontier>,
    sink: KafkaSink,
    pipeline: Pipeline,
    /// One buffer for the messages of every record (see [`recycle`]).
    messages: Vec<KafkaMessage<'static>>,
    /// The last position the daemon confirmed (or the lease's checkpoint at initialize).
    checkpointed: Option<Position>,
    last_checkpoint_attempt: Instant,
    /// Set by a `ShutdownException`: the lease is gone, checkpoints would all fail.
    lease_gone: bool,
    /// Inside a batch that is read record by record: the daemon would answer a checkpoint
    /// request only after the rest of the line, so none is sent until the batch is read.
    mid_line: bool,
    shard_end_checkpointed: bool,
    decoded: Vec<u8>,
    /// The shard's figures: the summary line and the exported metrics.
    metrics: Arc<Metrics>,
    /// When the current `processRecords` began.
    batch_started: Instant,
    last_summary: Instant,
    /// Exactly-once: the shard's transactions (set at initialize).
    eos: Option<ExactlyOnce>,
}

impl Replicator {
    pub fn new(
        config: Config,
        frontier: Arc<Frontier>,
        sink: KafkaSink,
        pipeline: Pipeline,
    ) -> Self {
        let now = Instant::now();
        let metrics = sink.metrics().clone();
        Replicator {
            config,
            shard_id: "unknown-shard".into(),
            frontier,
            sink,
            pipeline,
            messages: Vec::new(),
            checkpointed: None,
            last_checkpoint_attempt: now,
            lease_gone: false,
            mid_line: false,
            shard_end_checkpointed: false,
            decoded: Vec::new(),
            metrics,
            batch_started: now,
            last_summary: now,
            eos: None,
        }
    }

    fn initialize<R: Read, W: Write>(
        &mut self,
        shard_id: Option<&str>,
        sequence_number: Option<&str>,
        sub: Option<i64>,
        channel: &mut Channel<R, W>,
    ) -> Result<(), Fatal> {
        if let Some(shard_id) = shard_id {
            self.shard_id = shard_id.to_owned();
            logging::set_shard(shard_id);
        }
        self.metrics
            .set_shard(&self.shard_id, self.config.kafka.topic.trim());
        self.sink
            .set_shard(&self.shard_id, self.config.processing.number_of_shards);
        // Only a numeric position can be compared with; sentinels (TRIM_HORIZON, LATEST,
        // AT_TIMESTAMP) are below every record.
        self.checkpointed = sequence_number
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .map(|s| Position::new(s, sub.unwrap_or(0)));
        info!(
            "initialized at {} (sub-sequence {}); producing to topic {}",
            sequence_number.unwrap_or("null"),
            sub.map_or("null".to_owned(), |s| s.to_string()),
            self.config.kafka.topic
        );
        if self.config.exactly_once() {
            self.start_exactly_once(channel)?;
        }
        Ok(())
    }

    /// Exactly-once: fences the shard's previous owner (initializing the transactional
    /// producer ends its open transaction and forbids its commits), then reads the shard's
    /// last committed position: the records up to it are in Kafka already.
    fn start_exactly_once<R: Read, W: Write>(
        &mut self,
        channel: &mut Channel<R, W>,
    ) -> Result<(), Fatal> {
        let mut eos = ExactlyOnce::new(&self.config, &self.shard_id);
        let started = Instant::now();
        loop {
            match self
                .sink
                .start_transactions(&eos.transactional_id, TRANSACTION_CALL_TIMEOUT)
            {
                Ok(()) => break,
                Err(TxnError::Retry(why)) if started.elapsed() < EXACTLY_ONCE_START_TIMEOUT => {
                    warn!("{why}; trying again ({} s so far)", started.elapsed().as_secs());
                    if channel.daemon_gone() {
                        return Err(Fatal::DaemonGone(
                            "the daemon closed stdin while this child started its transactional producer; exiting".into(),
                        ));
                    }
                }
                Err(e) => {
                    return Err(Fatal::Delivery(format!(
                        "cannot start exactly-once delivery for shard {} (transactional id {}): {e}; check that the brokers allow transactions (transaction.state.log.replication.factor, min.insync.replicas) and that this principal may use the transactional id (IDEMPOTENT_WRITE and TransactionalId WRITE ACLs); exiting so that the daemon tries again",
                        self.shard_id, eos.transactional_id
                    )))
                }
            }
        }
        let left = EXACTLY_ONCE_START_TIMEOUT.saturating_sub(started.elapsed());
        let stored = positions::ensure_topic(&self.config, left.min(Duration::from_secs(30)), false)
            .and_then(|()| positions::read(&self.config, &eos.transactional_id, left))
            .map_err(|e| {
                Fatal::Delivery(format!(
                    "cannot read the last committed position of shard {}: {e:#}; exiting so that the daemon tries again",
                    self.shard_id
                ))
            })?;
        match (&stored.position, &self.checkpointed) {
            (Some(p), Some(c)) if p > c => info!(
                "exactly-once: the positions topic has {p}, after the checkpoint {c}: the records up to it are in Kafka already and are skipped"
            ),
            (Some(p), None) => info!(
                "exactly-once: the positions topic has {p} and the lease no checkpoint: the records up to it are skipped"
            ),
            (Some(p), _) => info!("exactly-once: committed position {p}"),
            (None, _) => info!("exactly-once: no committed position for this shard yet"),
        }
        if !stored.dead_lettered.is_empty() {
            info!(
                "exactly-once: {} messages after the committed position are in the dead-letter topic already; the replay skips them",
                stored.dead_lettered.len()
            );
        }
        eos.resume(stored, self.checkpointed.as_ref());
        info!(
            "exactly-once: transactional id {}, positions topic {}",
            eos.transactional_id,
            self.config.positions_topic()
        );
        self.eos = Some(eos);
        Ok(())
    }

    /// A `processRecords` begins.
    fn begin_batch(&mut self, streamed: bool) {
        self.mid_line = streamed;
        self.batch_started = Instant::now();
    }

    /// One record of the batch: produce it, then wait if the in-flight window is full.
    /// Stops at the first record that failed for good: producing the rest would put later
    /// records of its key into Kafka before it, ahead of the replay that delivers it.
    fn record<R: Read, W: Write>(
        &mut self,
        record: &Record<'_>,
        channel: &mut Channel<R, W>,
    ) -> Result<(), Fatal> {
        self.produce(record)?;
        let max_records = self.config.pipeline.max_in_flight_records;
        let max_bytes = self.config.pipeline.max_in_flight_bytes;
        let (in_flight_records, in_flight_bytes, failed) = self.frontier.in_flight();
        if failed {
            return self.check_failure(channel, true);
        }
        if in_flight_records >= max_records || in_flight_bytes >= max_bytes {
            self.wait_for(
                channel,
                Checkpoints::Periodic,
                None,
                "room in the in-flight window",
                |s| s.in_flight_records < max_records && s.in_flight_bytes < max_bytes,
            )?;
        }
        if self.eos.as_ref().is_some_and(ExactlyOnce::due) {
            self.commit_span(channel)?;
        }
        Ok(())
    }

    /// The batch is all read: wait for it if asked, checkpoint if due, answer.
    fn end_batch<R: Read, W: Write>(
        &mut self,
        millis_behind_latest: Option<i64>,
        channel: &mut Channel<R, W>,
    ) -> Result<(), Fatal> {
        self.mid_line = false;
        self.metrics
            .millis_behind_latest
            .store(millis_behind_latest.unwrap_or(i64::MIN), Ordering::Relaxed);
        if self.config.pipeline.wait_for_ack {
            // One checkpoint per batch, after it is all acknowledged: what this mode is for.
            self.wait_for(
                channel,
                Checkpoints::AtTheEnd,
                None,
                "the batch to be acknowledged",
                |s| s.in_flight_records == 0,
            )?;
        }
        self.sink.handle_returned();
        self.sink.check_fatal();
        self.check_failure(channel, true)?;
        if self
            .eos
            .as_ref()
            .is_some_and(|eos| eos.due_at_batch_end(millis_behind_latest))
        {
            self.commit_span(channel)?;
        }
        self.maybe_checkpoint(channel, false)?;
        self.maybe_log_summary();
        self.metrics
            .batch_duration
            .observe(self.batch_started.elapsed().as_secs_f64());
        channel.status("processRecords")
    }

    /// Decodes one record and queues its message.
    fn produce(&mut self, record: &Record<'_>) -> Result<(), Fatal> {
        let sequence_number = record.sequence_number.as_deref();
        let sub_sequence_number = record.sub_sequence_number.unwrap_or(0);
        let data = match record.data.as_deref() {
            Some(text) => {
                self.decoded.clear();
                base64::engine::general_purpose::STANDARD
                    .decode_vec(text, &mut self.decoded)
                    .map_err(|e| {
                        Fatal::Protocol(format!(
                            "record {}/{} has data that is not base64 ({e}); the daemon always sends base64, so this is a corrupted message; exiting without checkpointing it",
                            sequence_number.unwrap_or("null"),
                            sub_sequence_number
                        ))
                    })?;
                Some(self.decoded.as_slice())
            }
            None => None,
        };
        let kinesis = KinesisRecord {
            shard_id: &self.shard_id,
            data,
            partition_key: record.partition_key.as_deref(),
            sequence_number,
            sub_sequence_number,
            approximate_arrival_timestamp: record.approximate_arrival_timestamp,
        };
        let bytes = data.map_or(0, <[u8]>::len);
        self.metrics
            .records_received
            .fetch_add(1, Ordering::Relaxed);
        self.metrics
            .bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
        if sequence_number.is_none() {
            warn!("a record has no sequence number; it is replicated but cannot be a checkpoint itself");
        }
        let position = sequence_number.map(|s| Position::new(s, sub_sequence_number));
        if let Some(eos) = &mut self.eos {
            if eos.already_committed(position.as_ref()) {
                let skipped = self
                    .metrics
                    .records_already_in_kafka
                    .fetch_add(1, Ordering::Relaxed);
                if skipped == 0 {
                    info!("skipping records up to the committed position: an earlier owner of the shard committed them");
                }
                self.frontier.track(position, 0, 0);
                return Ok(());
            }
            eos.add(position.clone(), bytes);
        }
        let mut messages = recycle(std::mem::take(&mut self.messages));
        match self.pipeline.apply(&kinesis, &mut messages) {
            Ok(()) => {
                if messages.is_empty() {
                    self.metrics.records_dropped.fetch_add(1, Ordering::Relaxed);
                }
                // Exactly-once, replaying after an abort: the messages the broker refused
                // then are in the dead-letter topic already.
                // (An empty Vec does not allocate: nothing is added per record otherwise.)
                let done_before: Vec<usize> =
                    match self.eos.as_ref().filter(|eos| eos.has_dead_letters()) {
                        Some(eos) => (0..messages.len())
                            .filter(|i| eos.dead_lettered(position.as_ref(), *i))
                            .collect(),
                        None => Vec::new(),
                    };
                let id = self.frontier.track_arrived(
                    position,
                    (messages.len() - done_before.len()) as u32,
                    bytes,
                    record.approximate_arrival_timestamp,
                );
                for (index, message) in messages.drain(..).enumerate() {
                    if done_before.contains(&index) {
                        continue;
                    }
                    if let Err(e) = self.sink.send(id, index, &kinesis, message) {
                        self.frontier.fail(id, e.0);
                        break;
                    }
                }
            }
            Err(invalid) => {
                let at = format!(
                    "shard {} sequence number {} sub-sequence {}",
                    self.shard_id,
                    sequence_number.unwrap_or("null"),
                    sub_sequence_number
                );
                match self.config.processing.validation.on_invalid {
                    OnInvalid::Fail => {
                        let id = self.frontier.track(position, 1, bytes);
                        self.frontier.fail(id, format!("invalid record: {invalid}"));
                    }
                    OnInvalid::Skip => {
                        warn!("skipping the invalid record at {at}: {invalid}");
                        self.metrics.records_skipped.fetch_add(1, Ordering::Relaxed);
                        self.frontier.track(position, 0, 0);
                    }
                    OnInvalid::DeadLetter => {
                        warn!("dead-lettering the invalid record at {at}: {invalid}");
                        let id = self.frontier.track(position, 1, bytes);
                        let reason = format!("invalid record: {invalid}");
                        if let Err(e) = self.sink.dead_letter(id, &kinesis, &reason) {
                            self.frontier.fail(id, format!("{reason}; {}", e.0));
                        }
                    }
                }
            }
        }
        self.messages = recycle(messages);
        Ok(())
    }

    /// Waits until `done` holds for the frontier, doing the periodic work meanwhile: produce
    /// what the delivery thread handed back, checkpoint (if `checkpoints` is periodic), log.
    /// Returns whether `done` holds (false only when `limit` passed). A delivery failure
    /// ends the wait with a Fatal. Every caller is inside an action with a checkpointer.
    fn wait_for<R: Read, W: Write>(
        &mut self,
        channel: &mut Channel<R, W>,
        checkpoints: Checkpoints,
        limit: Option<Duration>,
        what: &str,
        mut done: impl FnMut(&FrontierState) -> bool,
    ) -> Result<bool, Fatal> {
        let start = Instant::now();
        let mut last_log = start;
        // The shard counts as waiting for Kafka from the first unfinished slice until
        // the wait ends, however it ends.
        let waiting = Waiting(self.metrics.clone());
        loop {
            if self.frontier.wait_until(WAIT_SLICE, &mut done) {
                return Ok(true);
            }
            waiting.0.set_waiting(true);
            self.sink.check_fatal();
            self.check_failure(channel, true)?;
            if channel.daemon_gone() {
                return Err(Fatal::DaemonGone(format!(
                    "the daemon closed stdin while this child waited {} s for {what}; exiting without a checkpoint (the next owner reads on from the last one)",
                    start.elapsed().as_secs()
                )));
            }
            self.sink.handle_returned();
            if checkpoints == Checkpoints::Periodic {
                self.maybe_checkpoint(channel, false)?;
            }
            self.maybe_log_summary();
            if last_log.elapsed() >= WAITING_LOG_INTERVAL {
                last_log = Instant::now();
                let state = self.frontier.state();
                warn!(
                    "waiting {} s for {what}: {} records ({} bytes) not yet acknowledged by Kafka{}",
                    start.elapsed().as_secs(),
                    state.in_flight_records,
                    state.in_flight_bytes,
                    self.sink
                        .last_client_error()
                        .map(|e| format!("; last Kafka error: {e}"))
                        .unwrap_or_default()
                );
            }
            if limit.is_some_and(|limit| start.elapsed() >= limit) {
                return Ok(false);
            }
        }
    }

    /// Turns a recorded delivery failure into the exit: give the records before it a
    /// bounded time to be acknowledged, checkpoint up to it (if allowed), then stop.
    fn check_failure<R: Read, W: Write>(
        &mut self,
        channel: &mut Channel<R, W>,
        may_checkpoint: bool,
    ) -> Result<(), Fatal> {
        if self.eos.is_some() {
            if let Some(why) = self.sink.fatal_error() {
                return Err(self.fenced(&why));
            }
        }
        let Some(failure) = self.frontier.failure() else {
            return Ok(());
        };
        if self.eos.is_some() {
            return self.abort_span(channel, &format!("a record failed at {failure}"));
        }
        // Batchmates of a refused record that come before the failure are produced again
        // first, so that the checkpoint can reach them.
        self.sink.handle_returned();
        self.sink.flush(self.config.flush_timeout());
        if may_checkpoint {
            self.maybe_checkpoint(channel, true)?;
        }
        Err(Fatal::Delivery(format!(
            "record of shard {} at {failure}; no checkpoint will pass it (last checkpoint: {}); exiting so the daemon restarts from there. Fix the cause (topic, size limits, permissions) and restart",
            self.shard_id,
            self.checkpointed
                .as_ref()
                .map_or("none".to_owned(), |p| p.to_string())
        )))
    }

    /// Checkpoints the acknowledged frontier if it moved and, unless `now`, if
    /// `CHECKPOINT_FREQ_SECONDS` have passed since the last attempt.
    fn maybe_checkpoint<R: Read, W: Write>(
        &mut self,
        channel: &mut Channel<R, W>,
        now: bool,
    ) -> Result<(), Fatal> {
        if self.lease_gone
            || self.mid_line
            || (!now && self.last_checkpoint_attempt.elapsed() < self.config.checkpoint_interval())
        {
            return Ok(());
        }
        // Exactly-once: only a committed position; the acknowledged frontier may be in an
        // open transaction that is still aborted.
        let frontier = match &self.eos {
            Some(eos) => eos.committed().cloned(),
            None => self.frontier.frontier(),
        };
        let Some(frontier) = frontier else {
            return Ok(());
        };
        if self.checkpointed.as_ref().is_some_and(|c| frontier <= *c) {
            return Ok(());
        }
        self.checkpoint(channel, Some(frontier), false)?;
        Ok(())
    }

    /// One checkpoint with the retry policy. `None` is SHARD_END (at shard end).
    /// Retryable errors are retried `CHECKPOINT_RETRIES` times in all, `SLEEP_SECONDS`
    /// apart, or until success when `until_done` (at shard end, where giving up would
    /// leave the shard's children unprocessed).
    fn checkpoint<R: Read, W: Write>(
        &mut self,
        channel: &mut Channel<R, W>,
        position: Option<Position>,
        until_done: bool,
    ) -> Result<bool, Fatal> {
        let shown = position
            .as_ref()
            .map_or("SHARD_END".to_owned(), |p| p.to_string());
        let attempts = self.config.checkpoint.retries;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.last_checkpoint_attempt = Instant::now();
            self.metrics
                .checkpoint_attempts
                .fetch_add(1, Ordering::Relaxed);
            let result = channel.checkpoint(position.as_ref())?;
            match &result {
                CheckpointResult::Done => self.metrics.checkpointed(shown.clone()),
                CheckpointResult::Failed(error) => self.metrics.checkpoint_failed(error),
            }
            match result {
                CheckpointResult::Done => {
                    info!("checkpointed at {shown}");
                    match position {
                        Some(position) => self.checkpointed = Some(position),
                        None => self.shard_end_checkpointed = true,
                    }
                    return Ok(true);
                }
                CheckpointResult::Failed(error)
                    if error == "ThrottlingException"
                        || error == "KinesisClientLibDependencyException" =>
                {
                    if !until_done && attempt >= attempts {
                        warn!("checkpoint at {shown} failed with {error} {attempt} times; giving up for now, the next checkpoint will cover it");
                        return Ok(false);
                    }
                    warn!(
                        "checkpoint at {shown} failed with {error} (attempt {attempt}{}); retrying in {} s",
                        if until_done { String::new() } else { format!(" of {attempts}") },
                        self.config.checkpoint.sleep_seconds
                    );
                    std::thread::sleep(self.config.checkpoint_sleep());
                }
                CheckpointResult::Failed(error) if error == "ShutdownException" => {
                    warn!("checkpoint at {shown} failed with ShutdownException: this worker no longer holds the lease; no further checkpoints");
                    self.lease_gone = true;
                    return Ok(false);
                }
                CheckpointResult::Failed(error) => {
                    error!(
                        "checkpoint at {shown} was rejected with {error} (last confirmed checkpoint: {}); not retried",
                        self.checkpointed
                            .as_ref()
                            .map_or("none".to_owned(), |p| p.to_string())
                    );
                    return Ok(false);
                }
            }
        }
    }

    fn shutdown_requested<R: Read, W: Write>(
        &mut self,
        channel: &mut Channel<R, W>,
    ) -> Result<(), Fatal> {
        info!("shutdown requested: flushing and checkpointing");
        self.metrics.set_state(ShardState::ShuttingDown);
        let flushed = self.wait_for(
            channel,
            Checkpoints::AtTheEnd,
            Some(self.config.flush_timeout()),
            "acknowledgements before the shutdown checkpoint",
            |s| s.in_flight_records == 0,
        )?;
        if !flushed {
            warn!(
                "{} records still unacknowledged after {} s; checkpointing what is acknowledged, the rest will be read again",
                self.frontier.state().in_flight_records,
                self.config.shutdown.flush_timeout_seconds
            );
        }
        self.check_failure(channel, true)?;
        self.commit_span(channel)?;
        self.maybe_checkpoint(channel, true)?;
        channel.status("shutdownRequested")
    }

    fn shard_ended<R: Read, W: Write>(
        &mut self,
        channel: &mut Channel<R, W>,
        response_for: &str,
    ) -> Result<(), Fatal> {
        info!("shard ended: waiting for every record to be acknowledged, then checkpointing SHARD_END");
        // No time limit: SHARD_END may only be written once everything is in Kafka, and
        // giving up would leave the child shards unprocessed. Permanent failures end the
        // wait with a Fatal instead.
        self.wait_for(
            channel,
            Checkpoints::AtTheEnd,
            None,
            "every record to be acknowledged before SHARD_END",
            |s| s.in_flight_records == 0,
        )?;
        self.check_failure(channel, true)?;
        // The parent's last records are committed before SHARD_END lets its children start.
        self.commit_span(channel)?;
        if self.lease_gone {
            warn!("the lease is gone (ShutdownException earlier); not checkpointing SHARD_END");
        } else {
            self.checkpoint(channel, None, true)?;
        }
        self.metrics.set_state(ShardState::Ended);
        channel.status(response_for)
    }

    fn lease_lost<R: Read, W: Write>(
        &mut self,
        channel: &mut Channel<R, W>,
        response_for: &str,
    ) -> Result<(), Fatal> {
        // Another worker owns the shard now and reads from the last checkpoint; a
        // checkpoint here is impossible (the daemon has no checkpointer) and unneeded.
        info!("lease lost: no further checkpoints; in-flight records are flushed at exit");
        self.lease_gone = true;
        if self.eos.is_some() {
            // The next owner replays the open span from the committed position.
            self.abort_quietly();
        }
        self.metrics.set_state(ShardState::Ended);
        channel.status(response_for)
    }

    /// Exactly-once: commits the open span with its position record. A commit that times
    /// out is tried again (every message of the span is acknowledged first, so a Kafka
    /// outage shows here); one that fails for good aborts the span.
    fn commit_span<R: Read, W: Write>(&mut self, channel: &mut Channel<R, W>) -> Result<(), Fatal> {
        if self.eos.as_ref().is_none_or(ExactlyOnce::is_empty) {
            return Ok(());
        }
        self.check_failure(channel, true)?;
        let started = Instant::now();
        let mut last_log = started;
        loop {
            match self.try_commit(TRANSACTION_CALL_TIMEOUT) {
                Ok(()) => return Ok(()),
                Err(TxnError::Retry(why)) => {
                    if channel.daemon_gone() {
                        return Err(Fatal::DaemonGone(format!(
                            "the daemon closed stdin while this child committed a transaction ({why}); exiting without a checkpoint (the next owner resumes after the last committed position)"
                        )));
                    }
                    self.check_failure(channel, true)?;
                    if last_log.elapsed() >= WAITING_LOG_INTERVAL {
                        last_log = Instant::now();
                        warn!(
                            "committing the transaction of {} records for {} s: {why}; trying again{}",
                            self.eos.as_ref().map_or(0, ExactlyOnce::span_records),
                            started.elapsed().as_secs(),
                            self.sink
                                .last_client_error()
                                .map(|e| format!("; last Kafka error: {e}"))
                                .unwrap_or_default()
                        );
                    }
                }
                Err(TxnError::Abort(why)) => return self.abort_span(channel, &why),
                Err(TxnError::Fatal(why)) => return Err(self.fenced(&why)),
            }
        }
    }

    /// Exactly-once: the open transaction cannot commit. Aborts it (read_committed
    /// consumers never see its messages), checkpoints the last committed position and
    /// stops: the daemon replays the records after it into a fresh transaction. Chosen
    /// over producing the span again in this child, which would mean keeping a copy of
    /// every record until its commit.
    fn abort_span<R: Read, W: Write>(
        &mut self,
        channel: &mut Channel<R, W>,
        why: &str,
    ) -> Result<(), Fatal> {
        let records = self.eos.as_ref().map_or(0, ExactlyOnce::span_records);
        // With a dead-letter topic, every message the broker refused for good is known once
        // every report of the span is in.
        let refused = if self.config.dead_letter_topic().is_some() {
            self.sink.flush(self.config.flush_timeout());
            self.sink.take_refused()
        } else {
            Vec::new()
        };
        self.abort_quietly();
        let fenced = self.sink.fatal_error().is_some();
        let dead_lettered = if refused.is_empty() || fenced {
            String::new()
        } else {
            self.dead_letter_refused(refused)
        };
        if !fenced {
            self.maybe_checkpoint(channel, true)?;
        }
        Err(Fatal::Delivery(format!(
            "the Kafka transaction of shard {} ({records} records) was aborted: {why}; read_committed consumers see none of it.{dead_lettered} The last committed position is {} (checkpointed); exiting so that the daemon replays the records after it",
            self.shard_id,
            self.eos
                .as_ref()
                .and_then(ExactlyOnce::committed)
                .map_or("none".to_owned(), |p| p.to_string())
        )))
    }

    /// Exactly-once, after an abort: the messages the broker refused for good go to the
    /// dead-letter topic in a transaction of their own, whose position record names them
    /// so that the replay skips them; the rest of the span is replayed as usual. What the
    /// exit message says about it.
    fn dead_letter_refused(&mut self, refused: Vec<crate::kafka::RefusedMessage>) -> String {
        let Some(eos) = &self.eos else {
            return String::new();
        };
        // A message of a record without a sequence number cannot be named: it is replayed
        // (and refused) again, as without a dead-letter topic.
        let mut named = positions::DeadLettered::new();
        let refused: Vec<_> = refused
            .into_iter()
            .filter(|r| match self.frontier.position(r.id) {
                Some(position) => {
                    named.insert((position, r.index));
                    true
                }
                None => false,
            })
            .collect();
        let count = refused.len();
        let value = eos.dead_letter_value(&self.shard_id, &named);
        let key = eos.transactional_id.clone();
        match self
            .sink
            .dead_letter_in_transaction(refused, &key, &value, TRANSACTION_CALL_TIMEOUT)
        {
            Ok(()) => {
                self.metrics
                    .transactions_committed
                    .fetch_add(1, Ordering::Relaxed);
                warn!("dead-lettered {count} messages the broker refused for good, in a transaction of their own; the replay skips them");
                format!(" The {count} messages the broker refused for good are in the dead-letter topic; the replay skips them.")
            }
            Err(e) => {
                self.abort_quietly();
                format!(" Dead-lettering the {count} messages the broker refused failed too ({e}); the replay meets them again.")
            }
        }
    }

    /// Aborts the open transaction, if any, logging (not returning) a failure: whoever
    /// initializes the shard's transactional id next aborts it anyway.
    fn abort_quietly(&mut self) {
        if self.sink.in_transaction() {
            self.metrics
                .transactions_aborted
                .fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.sink.abort(self.config.flush_timeout()) {
                warn!("{e}; the shard's next producer ends the transaction instead");
            }
        }
        if let Some(eos) = &mut self.eos {
            eos.aborted_span();
        }
    }

    /// At a clean exit: one bounded attempt to commit the open span.
    fn commit_at_exit(&mut self) {
        if let Err(e) = self.try_commit(self.config.flush_timeout()) {
            warn!("committing the last transaction at exit failed: {e}; aborting it, the next owner replays it");
            self.abort_quietly();
        }
    }

    /// One attempt to commit the open span with its position record.
    fn try_commit(&mut self, timeout: Duration) -> Result<(), TxnError> {
        let Some(eos) = &mut self.eos else {
            return Ok(());
        };
        let value = eos.position_value(&self.shard_id);
        self.sink
            .commit(&eos.transactional_id, Some(&value), timeout)?;
        eos.committed_span();
        self.metrics
            .transactions_committed
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The producer was fenced: the shard's next owner initialized the same transactional
    /// id, so this child must neither commit nor checkpoint anything more.
    fn fenced(&mut self, why: &str) -> Fatal {
        self.lease_gone = true;
        Fatal::Delivery(format!(
            "the transactional producer of shard {} can do nothing more ({why}): most likely another worker took the shard and fenced this one; exiting without a checkpoint",
            self.shard_id
        ))
    }

    /// At exit: give in-flight records a bounded time, then report. Exactly-once: the open
    /// transaction is committed when `clean` (stdin closed between messages), else aborted
    /// (the child stops on a failure); either way the next owner resumes right after
    /// what is committed.
    pub fn finish(&mut self, clean: bool) {
        // A fenced producer can do neither (its transaction is the next owner's to end).
        if self.eos.as_ref().is_some_and(|eos| !eos.is_empty()) && self.sink.fatal_error().is_none()
        {
            if clean && !self.lease_gone {
                self.commit_at_exit();
            } else {
                self.abort_quietly();
            }
        }
        self.sink.flush(self.config.flush_timeout());
        let state = self.frontier.state();
        if state.in_flight_records > 0 {
            warn!(
                "exiting with {} records not acknowledged by Kafka; they are after the last checkpoint and will be read again",
                state.in_flight_records
            );
        }
        self.log_summary();
    }

    fn maybe_log_summary(&mut self) {
        if let Some(interval) = self.config.summary_interval() {
            if self.last_summary.elapsed() >= interval {
                self.log_summary();
            }
        }
    }

    fn log_summary(&mut self) {
        self.last_summary = Instant::now();
        let state = self.frontier.state();
        let (produced_again, copies) = self.sink.produced_again();
        let m = &self.metrics;
        let millis_behind_latest = m.millis_behind_latest.load(Ordering::Relaxed);
        info!(
            "records={} bytes={} in_flight={} acknowledged={} dropped={} skipped={} dead_lettered={} produced_again={} copies={}{} last_checkpoint={} millisBehindLatest={}",
            m.records_received.load(Ordering::Relaxed),
            m.bytes_received.load(Ordering::Relaxed),
            state.in_flight_records,
            state.acknowledged_messages,
            m.records_dropped.load(Ordering::Relaxed),
            m.records_skipped.load(Ordering::Relaxed),
            self.sink.dead_lettered(),
            produced_again,
            copies,
            match &self.eos {
                Some(eos) => format!(
                    " committed={} already_in_kafka={}",
                    eos.committed().map_or("none".to_owned(), |p| p.to_string()),
                    m.records_already_in_kafka.load(Ordering::Relaxed)
                ),
                None => String::new(),
            },
            if self.shard_end_checkpointed {
                "SHARD_END".to_owned()
            } else {
                self.checkpointed
                    .as_ref()
                    .map_or("none".to_owned(), |p| p.to_string())
            },
            if millis_behind_latest == i64::MIN {
                "null".to_owned()
            } else {
                millis_behind_latest.to_string()
            }
        );
    }
}

impl Handler for Replicator {
    fn begin_batch(&mut self, streamed: bool) {
        Replicator::begin_batch(self, streamed)
    }

    fn record<R: Read, W: Write>(
        &mut self,
        record: &Record<'_>,
        channel: &mut Channel<R, W>,
    ) -> Result<(), Fatal> {
        Replicator::record(self, record, channel)
    }

    fn end_batch<R: Read, W: Write>(
        &mut self,
        millis_behind_latest: Option<i64>,
        channel: &mut Channel<R, W>,
    ) -> Result<(), Fatal> {
        Replicator::end_batch(self, millis_behind_latest, channel)
    }

    fn handle<R: Read, W: Write>(
        &mut self,
        message: DaemonMessage<'_>,
        channel: &mut Channel<R, W>,
    ) -> Result<(), Fatal> {
        match message {
            DaemonMessage::Initialize {
                shard_id,
                sequence_number,
                sub_sequence_number,
            } => {
                self.initialize(
                    shard_id.as_deref(),
                    sequence_number.as_deref(),
                    sub_sequence_number,
                    channel,
                )?;
                channel.status("initialize")
            }
            // The session hands batches over through begin_batch, record, end_batch.
            DaemonMessage::ProcessRecords { .. } => Ok(()),
            DaemonMessage::ShutdownRequested => self.shutdown_requested(channel),
            DaemonMessage::ShardEnded => self.shard_ended(channel, "shardEnded"),
            DaemonMessage::LeaseLost => self.lease_lost(channel, "leaseLost"),
            // KCL 1.x: TERMINATE is the shard end; ZOMBIE (or anything else) means the
            // lease is lost, and not checkpointing is the safe reading of an unknown reason.
            DaemonMessage::Shutdown { reason } => {
                match reason.as_deref() {
                    Some("TERMINATE") => self.shard_ended(channel, "shutdown"),
                    other => {
                        if other != Some("ZOMBIE") {
                            warn!("shutdown with unknown reason {other:?}; treating it as a lost lease");
                        }
                        self.lease_lost(channel, "shutdown")
                    }
                }
            }
            DaemonMessage::Checkpoint(_) | DaemonMessage::Unknown { .. } => Ok(()),
        }
    }
}
