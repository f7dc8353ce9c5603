"""Both ways the daemon reads Kinesis: enhanced fan-out (the template's `retrievalMode = FANOUT`:
RegisterStreamConsumer, then SubscribeToShard over HTTP/2) and polling (GetRecords)."""

from __future__ import annotations

import re
import time

import pytest

from conftest import assert_complete
from kkrlocal.records import count_topic

# run.sh's own logback.xml (INFO), plus DEBUG for the KCL's fan-out retrieval, whose
# subscription lifecycle ("[SubscriptionLifetime] ... Starting subscribe to shard", "... creating
# record subscription") and its deliveries are logged at DEBUG only. Passed the way users pass theirs:
# KCL_LOGBACK_CONFIG.
LOGBACK = """<?xml version="1.0" encoding="UTF-8"?>
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d{yyyy-MM-dd'T'HH:mm:ss.SSSXXX} %-5level [%thread] %logger{36} - %msg%n</pattern></encoder>
  </appender>
  <logger name="software.amazon.kinesis.retrieval.fanout" level="DEBUG"/>
  <logger name="software.amazon.awssdk" level="WARN"/>
  <logger name="io.netty" level="WARN"/>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
"""

# What each mode leaves in the daemon's log (logger names are abbreviated by the pattern).
POLLING_MARKS = re.compile(r"PrefetchRecordsPublisher|KinesisDataFetcher - Initializing shard")
SUBSCRIBE = re.compile(r"\[SubscriptionLifetime\]: \(FanOutRecordsPublisher#subscribeToShard\) @ .* -- Starting subscribe to shard")
# The event stream came back and the KCL subscribed to its events.
STREAMING = re.compile(r"\[SubscriptionLifetime\]: \(RecordFlow#onEventStream\) @ .* -- creating record subscription")
DELIVERY = re.compile(r"FanOutRecordsPublisher - shardId-\d+: Record delivery time to shard consumer")


def trouble(log: str, limit: int = 15) -> str:
    """The WARN/ERROR lines of the daemon and of its children (each child line once: not the
    daemon's ERROR-level copy of every child stderr line) and the first line of any exception,
    for a failure message that says what broke."""
    lines = [
        line
        for line in log.splitlines()
        if re.match(r"^\S+ (WARN|ERROR) ", line) and "DrainChildSTDERRTask" not in line and "Received error line" not in line
        or re.match(r"^\S*(Exception|Error)\b", line)
    ]
    seen, out = set(), []
    for line in lines:
        gist = re.sub(r"^\S+ ", "", line)[:200]
        if gist not in seen:
            seen.add(gist)
            out.append(line[:400])
    return "\n".join(out[:limit]) or "(no WARN or ERROR line from the daemon)"


@pytest.mark.parametrize("mode", ["FANOUT", "POLLING"])
def test_every_record_reaches_kafka_in_order_and_checkpoints_at_the_last(scenario, mode, tmp_path):
    stack = scenario.stack
    scenario.setup(shards=4, partitions=4)
    logback = tmp_path / "logback.xml"
    logback.write_text(LOGBACK)
    writer = scenario.writer(rate=200).start()
    replicator = scenario.replicator(retrieval=mode, env={"KCL_LOGBACK_CONFIG": str(logback)})
    try:
        stack.wait_for_leases(scenario.application, shards=4, timeout=180)
        # The backlog read from TRIM_HORIZON first, then records read as they arrive: 20 s of
        # live writing after the first records reached Kafka.
        deadline = time.monotonic() + 120
        while count_topic(stack.kafka.bootstrap, scenario.topic) < 200:
            if time.monotonic() > deadline:
                raise TimeoutError("no records in Kafka 120 s after the leases were taken")
            time.sleep(0.5)
        time.sleep(20)
        writer.stop()
        assert not writer.errors, writer.errors
        report = scenario.read(writer, timeout=150)
        gaps = scenario.wait_checkpointed(writer, timeout=90)
    except TimeoutError as e:
        pytest.fail(f"{mode}: {e}\ndaemon trouble:\n{trouble(replicator.log())}")
    finally:
        writer.stop()

    log = replicator.log()
    arn = stack.kinesis.client.describe_stream_summary(StreamName=scenario.stream)["StreamDescriptionSummary"]["StreamARN"]
    consumers = stack.kinesis.client.list_stream_consumers(StreamARN=arn)["Consumers"]
    subscribe_lines = [line for line in log.splitlines() if SUBSCRIBE.search(line)]
    subscribed = {shard for line in subscribe_lines for shard in re.findall(r"shardId-\d+", line)}
    streams = {shard for line in log.splitlines() if STREAMING.search(line) for shard in re.findall(r"shardId-\d+", line)}
    deliveries = len(DELIVERY.findall(log))
    polling_marks = len(POLLING_MARKS.findall(log))
    scenario.record(
        report,
        retrieval=mode,
        shards=4,
        stream_consumers=[c["ConsumerName"] for c in consumers],
        subscriptions=len(subscribe_lines),
        event_streams=len(streams),
        fanout_deliveries=deliveries,
        polling_log_lines=polling_marks,
    )

    detail = f"{mode}: {report.line()}; checkpoint gaps {gaps}\ndaemon trouble:\n{trouble(log)}"
    assert report.missing == 0, detail
    assert_complete(report, max_duplicates=None)
    # One daemon, no lease ever moved: nothing is read twice.
    assert report.duplicates == 0, report.line()
    assert not gaps, detail
    assert replicator.alive()

    # The mode asked for is the mode used.
    if mode == "FANOUT":
        # The KCL registered a consumer named after the application (RegisterStreamConsumer),
        # subscribed to every shard through it (SubscribeToShard), got an HTTP/2 event stream
        # for each and records through them; it never polled.
        assert [(c["ConsumerName"], c["ConsumerStatus"]) for c in consumers] == [(scenario.application, "ACTIVE")], consumers
        assert subscribed == {f"shardId-{n:012d}" for n in range(4)}, (subscribed, subscribe_lines[:5], detail)
        assert streams == subscribed, (streams, subscribed, detail)
        assert deliveries > 0, detail
        assert polling_marks == 0, polling_marks
    else:
        assert consumers == [], consumers
        assert subscribe_lines == [] and deliveries == 0, subscribe_lines[:5]
        assert polling_marks >= 4, polling_marks
