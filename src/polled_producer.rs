//! The thread that serves a producer's delivery reports, woken by librdkafka itself.
//!
//! rdkafka's `ThreadedProducer` polls in 100 ms steps, and `BaseProducer::poll` waits in
//! whole milliseconds (the time left, rounded down) and then polls without waiting until its
//! deadline has passed: after a delivery report wakes it mid-step, it spins through the
//! fraction of a millisecond left (perf: `clock_gettime` under `poll`). With a record a
//! second, that spin was most of an idle child's CPU (docs/benchmark.md, the fleet figure).
//!
//! This thread never waits inside librdkafka. It asks librdkafka to call back when the
//! producer's main queue (delivery reports, errors, logs) goes from empty to not empty
//! (`rd_kafka_queue_cb_event_enable`); the callback unparks the thread, which serves the
//! queue until it is empty, never waiting inside librdkafka, then parks again. An idle producer's thread
//! sleeps until there is something to do, and a busy one never spins.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use log::warn;
use rdkafka::bindings as rdsys;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

/// How long the thread parks when no callback wakes it. Only a safety net: a wake-up is
/// never lost (an unpark before the park makes the park return at once), so this bounds
/// the cost of a case librdkafka is not known to have, for one wake-up a second.
const PARK_LIMIT: Duration = Duration::from_secs(1);

/// A `BaseProducer` with a thread that serves its delivery reports. Clones share the
/// producer; dropping the last one stops the thread and waits for it (microseconds: it
/// never blocks in librdkafka).
pub struct PolledProducer<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    poller: Option<Arc<Poller>>,
}

struct Poller {
    should_stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl<C: ProducerContext + 'static> PolledProducer<C> {
    pub fn new(producer: BaseProducer<C>) -> std::io::Result<PolledProducer<C>> {
        Self::with_park_limit(producer, PARK_LIMIT)
    }

    fn with_park_limit(
        producer: BaseProducer<C>,
        park_limit: Duration,
    ) -> std::io::Result<PolledProducer<C>> {
        let producer = Arc::new(producer);
        let should_stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let producer = Arc::clone(&producer);
            let should_stop = Arc::clone(&should_stop);
            std::thread::Builder::new()
                .name("producer polling thread".into())
                .spawn(move || serve(&producer, &should_stop, park_limit))?
        };
        Ok(PolledProducer {
            producer,
            poller: Some(Arc::new(Poller {
                should_stop,
                handle,
            })),
        })
    }
}

/// The polling thread's life: wake-ups on, serve until told to stop, wake-ups off.
fn serve<C: ProducerContext>(
    producer: &BaseProducer<C>,
    should_stop: &AtomicBool,
    park_limit: Duration,
) {
    let main_queue = MainQueue::of(producer);
    // The callback owns nothing: it borrows this box, which outlives it because the
    // callback is switched off (under the queue's lock, so not while it runs) before the
    // box is dropped.
    let me = Box::new(std::thread::current());
    let me_ptr = (&*me as *const Thread).cast_mut().cast::<c_void>();
    // SAFETY: the queue handle is valid (`MainQueue`); `me_ptr` stays valid until the
    // callback is switched off below.
    unsafe { rdsys::rd_kafka_queue_cb_event_enable(main_queue.0, Some(unpark), me_ptr) };
    while !should_stop.load(Ordering::Acquire) {
        // The callback fires only on the empty → not-empty edge, so drain to empty: one
        // event per `poll(ZERO)`, none of them waiting.
        while main_queue.len() > 0 && !should_stop.load(Ordering::Acquire) {
            producer.poll(Duration::ZERO);
        }
        std::thread::park_timeout(park_limit);
    }
    // SAFETY: as above; after this returns librdkafka no longer holds `me_ptr`.
    unsafe { rdsys::rd_kafka_queue_cb_event_enable(main_queue.0, None, std::ptr::null_mut()) };
    drop(me);
}

/// Called by librdkafka, on one of its threads and under the queue's lock, when the main
/// queue goes from empty to not empty. It must not call librdkafka; it only unparks.
unsafe extern "C" fn unpark(_rk: *mut rdsys::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `Thread` that `serve` keeps alive while this is enabled.
    let thread = unsafe { &*opaque.cast::<Thread>() };
    thread.unpark();
}

/// A handle on a producer's main queue (where its delivery reports, errors and, as rdkafka
/// forwards them, logs arrive), released on drop.
struct MainQueue(*mut rdsys::rd_kafka_queue_t);

impl MainQueue {
    /// `rd_kafka_queue_get_main` cannot fail: it wraps the client's own reply queue in a new
    /// handle (librdkafka aborts on allocation failure), as rdkafka's own `main_queue` relies on.
    fn of<C: ProducerContext>(producer: &BaseProducer<C>) -> MainQueue {
        // SAFETY: the client pointer is valid for the producer's life, which outlives this
        // handle (both live in `serve`).
        MainQueue(unsafe { rdsys::rd_kafka_queue_get_main(producer.client().native_ptr()) })
    }

    fn len(&self) -> usize {
        // SAFETY: the handle is valid until drop.
        unsafe { rdsys::rd_kafka_queue_length(self.0) }
    }
}

impl Drop for MainQueue {
    fn drop(&mut self) {
        // SAFETY: the handle came from `rd_kafka_queue_get_main` and is released once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.0) };
    }
}

impl<C: ProducerContext + 'static> std::ops::Deref for PolledProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> Clone for PolledProducer<C> {
    fn clone(&self) -> Self {
        PolledProducer {
            producer: Arc::clone(&self.producer),
            poller: self.poller.clone(),
        }
    }
}

impl<C: ProducerContext + 'static> Drop for PolledProducer<C> {
    /// The last clone stops the polling thread and waits for it, so that no thread is left
    /// serving a producer nobody holds; it takes microseconds, as the thread never waits in
    /// librdkafka. The producer itself is dropped after (rdkafka's drop: purge, then up to
    /// 500 ms of flush); whoever needs the messages delivered flushes first.
    fn drop(&mut self) {
        let Some(poller) = self.poller.take().and_then(Arc::into_inner) else {
            return;
        };
        poller.should_stop.store(true, Ordering::Release);
        poller.handle.thread().unpark();
        // A delivery callback that dropped the last clone would otherwise wait for itself.
        if poller.handle.thread().id() != std::thread::current().id()
            && poller.handle.join().is_err()
        {
            warn!("the producer's polling thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::message::DeliveryResult;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::BaseRecord;
    use rdkafka::ClientContext;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl ClientContext for Counting {}

    impl ProducerContext for Counting {
        type DeliveryOpaque = ();

        fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
            if result.is_ok() {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// A mock cluster with topic `t`, and a producer to it that counts its deliveries.
    fn counting_producer() -> (
        MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        BaseProducer<Counting>,
    ) {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let producer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("linger.ms", "0")
            .create_with_context(Counting::default())
            .unwrap();
        (cluster, producer)
    }

    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Nobody but the thread polls here, and its safety-net wake-up is an hour away: every
    /// report must reach the context through the callback wake-ups, in bursts with idle gaps
    /// between them (each gap empties the queue, so each burst needs a new empty → not-empty
    /// wake-up).
    #[test]
    fn the_thread_serves_every_delivery_report_without_anyone_polling() {
        let (_cluster, producer) = counting_producer();
        let producer =
            PolledProducer::with_park_limit(producer, Duration::from_secs(3600)).unwrap();
        let context = Arc::clone(producer.context());
        let mut sent = 0;
        for burst in [1, 500, 1, 2_000] {
            for i in 0..burst {
                let payload = format!("{i}");
                producer
                    .send(BaseRecord::<(), str, ()>::with_opaque_to("t", ()).payload(&payload))
                    .unwrap();
            }
            sent += burst;
            wait_for("the burst's delivery reports", || {
                context.0.load(Ordering::SeqCst) == sent
            });
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(context.0.load(Ordering::SeqCst), sent);
    }

    /// Dropping the last clone waits for the thread, so the producer (and its context) is
    /// gone when the drop returns, not a polling step later.
    #[test]
    fn dropping_the_last_clone_stops_the_thread_and_releases_the_producer() {
        let (_cluster, producer) = counting_producer();
        let producer = PolledProducer::new(producer).unwrap();
        let context = Arc::clone(producer.context());
        let clone = producer.clone();
        drop(producer);
        assert!(
            Arc::strong_count(&context) > 1,
            "a clone still holds the producer"
        );
        drop(clone);
        assert_eq!(
            Arc::strong_count(&context),
            1,
            "the producer outlived its last clone"
        );
    }
}
