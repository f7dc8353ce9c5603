"""The path users deploy, in its plain form: several daemons sharing one application."""

from conftest import assert_complete, wait_until


def test_two_daemons_share_four_shards_and_checkpoint_each_at_its_last_record(scenario):
    scenario.setup(shards=4, partitions=4)
    writer = scenario.writer(rate=300).start(seconds=25)
    first = scenario.replicator()
    second = scenario.replicator()
    leases = scenario.stack.wait_for_leases(scenario.application, shards=4, owners=2, timeout=150)
    writer.wait(60)
    assert not writer.errors, writer.errors

    report = scenario.read(writer)
    gaps = scenario.wait_checkpointed(writer)
    scenario.record(report, daemons=2, shards=4, owners=len({lease["owner"] for lease in leases.values()}))

    assert_complete(report, max_duplicates=None)
    # No daemon died. Leases may move between the two while they balance, but KCL 3.x moves
    # them by graceful handoff (shutdownRequested: the child checkpoints what Kafka has
    # acknowledged; the new owner starts there), so nothing is replayed.
    assert report.duplicates == 0, report.line()
    assert not gaps, gaps
    assert first.alive() and second.alive()
    # A lease in the middle of a handoff has no child for a moment (the old one has ended,
    # the new owner's is starting): wait for the balance to settle rather than sample once.
    wait_until("one child per shard across the two daemons",
               lambda: len(first.children()) + len(second.children()) == 4, timeout=60)
