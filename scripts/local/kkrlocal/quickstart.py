"""`./run.sh --local`: the replicator on this machine, as it runs in production, fed with
sample records, with one live view of its progress.

Kept import-light at the top (usage() is shown without the virtualenv); the stack is
imported in main()."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

STREAM = "quickstart"
TOPIC = "quickstart"
APPLICATION = "quickstart-replicator"


def usage() -> str:
    return """Usage: ./run.sh --local [--for SECONDS] [--rate RECORDS_PER_SECOND] [--shards N]

Runs the whole pipeline on this machine, on loopback only: an Apache Kafka broker (KRaft),
kinesis-local as Kinesis, moto as DynamoDB, and the replicator started exactly as in
production (run.sh -> the KCL MultiLangDaemon from jars/pom.xml -> one
kinesis-kafka-replicator per shard). It creates a stream of 4 shards and a topic of 4
partitions, puts sample records at a steady rate and shows live progress: records put,
records in Kafka, and per shard the lease owner, the last checkpoint and how many records
wait behind it. The first run fetches and builds what is missing (a few minutes).

  --for SECONDS   put records for that long, wait for the last ones to reach Kafka and be
                  checkpointed, print one summary line, stop everything; exit 0 only when
                  no record is missing
  --rate N        records per second (default 200)
  --shards N      shards of the stream (default 4)

Without --for it runs until Ctrl-C, which stops everything it started. Logs: the work
directory it prints (the daemon's log holds every child's stderr)."""


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="run.sh --local", add_help=False)
    parser.add_argument("--for", dest="seconds", type=float)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("-h", "--help", action="store_true")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"run.sh --local: unknown argument {unknown[0]!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    return args


class View:
    """One refreshed view on a terminal; a line every 10 s otherwise (a CI log, a pipe)."""

    def __init__(self):
        self.tty = sys.stdout.isatty()
        self.last_plain = 0.0
        self.drawn = 0

    def show(self, lines: list[str]) -> None:
        if self.tty:
            out = ("\x1b[F\x1b[2K" * self.drawn) + "\n".join(lines) + "\n"
            sys.stdout.write(out)
            sys.stdout.flush()
            self.drawn = len(lines)
        elif time.monotonic() - self.last_plain >= 10:
            print(" | ".join(line.strip() for line in lines[:2]), flush=True)
            self.last_plain = time.monotonic()


def short(sequence: str | None) -> str:
    if not sequence:
        return "-"
    if sequence in ("TRIM_HORIZON", "LATEST", "SHARD_END", "AT_TIMESTAMP"):
        return sequence
    return f"…{sequence[-8:]}"


# DELIVERY_GUARANTEE=exactly_once reaches the replicator through run.sh's environment. Its
# commit markers take offsets too: the progress counts offsets then, and the final check
# reads what a read_committed consumer sees.
EXACTLY_ONCE = os.environ.get("DELIVERY_GUARANTEE", "").strip().lower().replace("-", "_") == "exactly_once"
READ_CONF = {"isolation.level": "read_committed"} if EXACTLY_ONCE else None


def progress(writer, leases: dict, in_kafka: int, started: float, state: str) -> list[str]:
    put = writer.count
    in_kafka_label = "Kafka offsets (records and commit markers)" if EXACTLY_ONCE else "in Kafka"
    lines = [
        f"kinesis-kafka-replicator, local  {time.monotonic() - started:6.0f} s  {state}",
        f"  records put {put:>9,}   {in_kafka_label} {in_kafka:>9,}   not yet in Kafka {max(0, put - in_kafka):>7,}",
        f"  {'shard':<22} {'owner':<10} {'last checkpoint':<16} {'records behind it':>17}",
    ]
    by_shard: dict[str, list[int]] = {}
    for p in writer.puts:
        by_shard.setdefault(p.shard, []).append(int(p.sequence))
    for shard in sorted(set(leases) | set(by_shard)):
        lease = leases.get(shard, {})
        checkpoint = lease.get("checkpoint")
        sequences = by_shard.get(shard, [])
        if checkpoint == "SHARD_END":
            behind = 0
        elif checkpoint and checkpoint.isdigit():
            behind = sum(1 for s in sequences if s > int(checkpoint))
        else:
            behind = len(sequences)
        owner = (lease.get("owner") or "-")[:8]
        lines.append(f"  {shard:<22} {owner:<10} {short(checkpoint):<16} {behind:>17,}")
    lines.append("  Ctrl-C stops everything" if state != "done" else "")
    return lines


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.help:
        print(usage())
        return 0

    from .env import CACHE, say
    from .records import Writer, checkpoint_gaps, count_topic, read_topic, reckon
    from .stack import Stack

    interrupted = False

    def on_signal(signum, _frame):
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    workdir = CACHE / "quickstart" / time.strftime("%Y%m%d-%H%M%S")
    say(f"starting Kafka, Kinesis and DynamoDB on loopback; work directory and logs: {workdir}")
    stack = Stack(workdir, build=False)
    try:
        stack.kafka.create_topic(TOPIC, 4)
        stack.kinesis.create_stream(STREAM, args.shards)
        say(f"created stream '{STREAM}' ({args.shards} shards) and topic '{TOPIC}' (4 partitions)")
        replicator = stack.replicator(
            stream=STREAM,
            application=APPLICATION,
            topic=TOPIC,
            env={"CHECKPOINT_FREQ_SECONDS": "5", "KCL_LOG_LEVEL": "INFO"},
            name="daemon",
        )
        say(f"started ./run.sh (the KCL MultiLangDaemon and one replicator per shard); its log: {replicator.log_path}")
        writer = Writer(stack.kinesis.client, STREAM, rate=args.rate).start(seconds=args.seconds)
        view = View()
        started = time.monotonic()
        leases: dict = {}
        in_kafka = 0
        while not interrupted:
            if not replicator.alive():
                view.show(progress(writer, leases, in_kafka, started, "the daemon exited"))
                say(f"the daemon exited; the end of its log ({replicator.log_path}):\n" + "\n".join(replicator.log().splitlines()[-20:]))
                return 1
            leases = stack.moto.leases(APPLICATION)
            in_kafka = count_topic(stack.kafka.bootstrap, TOPIC)
            held = sum(1 for lease in leases.values() if lease["owner"])
            state = "replicating" if held else "waiting for the daemon to take the leases (about 30 s)"
            if args.seconds is not None and not writer.running:
                state = "waiting for the last records"
                if in_kafka >= writer.count and not checkpoint_gaps(writer, leases):
                    break
                if time.monotonic() - started > args.seconds + 120:
                    break
            view.show(progress(writer, leases, in_kafka, started, state))
            time.sleep(1)
        writer.stop()
        view.show(progress(writer, stack.moto.leases(APPLICATION), count_topic(stack.kafka.bootstrap, TOPIC), started, "done"))

        messages = read_topic(stack.kafka.bootstrap, TOPIC, until_count=writer.count, timeout=30, idle=1.0, conf=READ_CONF)
        report = reckon(writer, messages)
        leases = stack.moto.leases(APPLICATION)
        gaps = checkpoint_gaps(writer, leases)
        checkpoints = " ".join(
            f"{shard}={short(lease['checkpoint'])}{'' if shard not in gaps else '(behind)'}" for shard, lease in sorted(leases.items())
        )
        print(f"{report.line()} checkpoints: {checkpoints}", flush=True)
        if writer.errors:
            say(f"the writer met errors: {writer.errors[:3]}")
        return 0 if report.missing == 0 and not writer.errors else 1
    finally:
        say("stopping everything it started")
        stack.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
