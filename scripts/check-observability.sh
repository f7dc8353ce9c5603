#!/usr/bin/env bash
# Checks the dashboard and the alerts of deploy/ (issue 11), offline:
#
#   1. promtool check rules deploy/prometheus/alerts.yml (syntax, PromQL, templates);
#   2. promtool test rules deploy/prometheus/alerts_test.yml: every alert fires, and does not
#      fire, when its unit tests say;
#   3. the metric names: the list this script expects (below) equals the one
#      src/metrics_server.rs exposes (its `points`), and every kkr_ name in the alerts and
#      the dashboard is one of them;
#   4. deploy/grafana/kinesis-kafka-replicator.json: valid JSON, a Grafana dashboard whose
#      panels use the `datasource` variable, every variable it references defined, and every
#      PromQL expression (panel targets and variable queries) parsed by promtool, with the
#      dashboard's variables replaced by sample values ($topic, $shard, $__rate_interval, …);
#   5. live: the real metrics server (`kinesis-kafka-replicator metrics`: KKR_BIN, else the
#      newer of target/release and target/debug, else `cargo build`) fed by two stand-in
#      shard children over its socket and scraped by a real Prometheus (Debian's package
#      again) that loads alerts.yml: every rule evaluates without error, the two alerts the
#      stand-ins provoke fire and no other, and every dashboard query returns series;
#   6. proves those checks can fail: broken copies of the rules and of the dashboard must
#      each be rejected.
#
#   scripts/check-observability.sh        (from any directory; exit 0 when all is well)
#
# promtool and the Prometheus server come from Debian's `prometheus` package (apt-get, as
# root) when they are not on PATH; where apt cannot install them, they are built with
# `go install` from the Go module proxy into KKR_CACHE (default
# ~/.cache/kinesis-kafka-replicator). PROMTOOL=/path/to/promtool and
# PROMETHEUS=/path/to/prometheus use those binaries instead.
set -Eeuo pipefail

# The Go module of Prometheus 3.x (its Go module versions are v0.x; older ones carry replace
# directives, which `go install` refuses), for the fallback.
readonly PROMETHEUS_GO_VERSION=v0.316.0

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly ROOT
readonly RULES=$ROOT/deploy/prometheus/alerts.yml
readonly RULE_TESTS=$ROOT/deploy/prometheus/alerts_test.yml
readonly DASHBOARD=$ROOT/deploy/grafana/kinesis-kafka-replicator.json
readonly SERVER_SOURCE=$ROOT/src/metrics_server.rs
cache=${KKR_CACHE:-$HOME/.cache/kinesis-kafka-replicator}/check-observability

# Every series the metrics endpoint exposes, as Prometheus names them (README, "Metrics").
# Step 3 fails when src/metrics_server.rs exposes another set: then update this list, the
# dashboard, the alerts and the README together.
readonly METRICS="
counter kkr_records_received_total
counter kkr_received_bytes_total
counter kkr_messages_acknowledged_total
counter kkr_records_dropped_total
counter kkr_records_skipped_total
counter kkr_messages_dead_lettered_total
counter kkr_messages_produced_again_total
counter kkr_messages_copied_total
counter kkr_transactions_committed_total
counter kkr_transactions_aborted_total
counter kkr_records_already_in_kafka_total
counter kkr_delivery_failures_total
counter kkr_producer_errors_total
counter kkr_checkpoint_attempts_total
counter kkr_checkpoints_total
counter kkr_checkpoint_failures_total
gauge kkr_daemon_up
gauge kkr_shards
gauge kkr_records_in_flight
gauge kkr_in_flight_bytes
gauge kkr_since_last_checkpoint_seconds
gauge kkr_millis_behind_latest
gauge kkr_waiting_for_kafka
gauge kkr_producer_queue_messages
gauge kkr_broker_rtt_seconds
histogram kkr_replication_latency_seconds
histogram kkr_batch_duration_seconds
"

die() {
    printf 'check-observability: error: %s\n' "$1" >&2
    shift
    local line
    for line in "$@"; do printf '  %s\n' "$line" >&2; done
    exit 1
}
step() { printf '\n== %s\n' "$*"; }
trap 'die "line $LINENO: a command failed (exit $?); see above"' ERR

for file in "$RULES" "$RULE_TESTS" "$DASHBOARD" "$SERVER_SOURCE"; do
    [[ -r $file ]] || die "$file is missing; run this script from a checkout of the repository"
done

# ---- the tools ----------------------------------------------------------------------------
apt_install() {
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        return 1
    fi
    step "installing $* with apt-get (Debian's packages)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

command -v python3 >/dev/null || apt_install python3 ||
    die "python3 is required (Debian: apt-get install python3)"

# Finds (or installs) one of Prometheus's two binaries: `promtool`, `prometheus` (the server,
# for step 5). Order: the variable PROMTOOL / PROMETHEUS, PATH, /usr/bin, this script's
# cache, Debian's `prometheus` package (both binaries), else `go install` of both from the
# Go module proxy into the cache. Prints the path.
find_tool() {
    local name=$1 given=$2 found target go
    if [[ -n $given ]]; then
        [[ -x $given ]] || die "$given (from the environment) is not an executable"
        printf '%s\n' "$given"
        return
    fi
    target=$cache/prometheus-$PROMETHEUS_GO_VERSION
    for found in "$(command -v "$name" || true)" "/usr/bin/$name" "$target/$name"; do
        if [[ -n $found && -x $found ]]; then
            printf '%s\n' "$found"
            return
        fi
    done
    # Debian's package also installs the server as a service: not started where there is no
    # init system (containers, CI); where there is one, it is disabled again, since nothing
    # here needs it running.
    if apt_install prometheus >&2 && [[ -x /usr/bin/$name ]]; then
        if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
            systemctl disable --now prometheus >/dev/null 2>&1 || true
        fi
        printf '%s\n' "/usr/bin/$name"
        return
    fi
    go=$(command -v go || true)
    [[ -n $go || ! -x /usr/local/go/bin/go ]] || go=/usr/local/go/bin/go
    [[ -n $go ]] ||
        die "$name is not installed, apt-get cannot install Debian's prometheus package here, and there is no Go toolchain to build it" \
            "install it (Debian: apt-get install prometheus), or set PROMTOOL and PROMETHEUS to the binaries"
    step "building promtool and prometheus (github.com/prometheus/prometheus $PROMETHEUS_GO_VERSION, go install, Go module proxy) into $target" >&2
    mkdir -p -- "$target"
    GOBIN=$target "$go" install "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_GO_VERSION" \
        "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_GO_VERSION" >&2 ||
        die "go install github.com/prometheus/prometheus/cmd/{promtool,prometheus}@$PROMETHEUS_GO_VERSION failed (output above)" \
            "nothing was checked"
    printf '%s\n' "$target/$name"
}
promtool=$(find_tool promtool "${PROMTOOL:-}")
version=$("$promtool" --version 2>&1 | head -n1) || die "$promtool does not run"
printf 'using %s (%s)\n' "$promtool" "$version"

work=$(mktemp -d "${TMPDIR:-/tmp}/check-observability.XXXXXX")
started=()   # the processes step 5 starts, ended by their pids
cleanup() {
    local pid
    for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${started[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf -- "$work"
}
trap cleanup EXIT

# ---- 1, 2: the alerting rules ---------------------------------------------------------------
step "promtool check rules deploy/prometheus/alerts.yml"
"$promtool" check rules "$RULES" || die "deploy/prometheus/alerts.yml does not pass promtool check rules (above)"

step "promtool test rules deploy/prometheus/alerts_test.yml"
"$promtool" test rules "$RULE_TESTS" || die "the alerts' unit tests fail (above)"

# ---- 3, 4: metric names and the dashboard (Python: JSON, and the PromQL through promtool) ----
# Arguments: the dashboard, the rules, the metrics server's source, promtool, a scratch
# directory. The expected metrics: $METRICS. Prints one line per check; exits 1 when
# any fails.
check_names_and_dashboard() {
    KKR_EXPECTED_METRICS=$METRICS python3 - "$@" <<'PYTHON'
import json, os, re, subprocess, sys

dashboard_path, rules_path, source_path, promtool, scratch = sys.argv[1:6]
failures = []

def check(ok, message, detail="", quiet=False):
    if not ok or not quiet:
        print(("ok    " if ok else "FAIL  ") + message + (f"\n      {detail}" if detail and not ok else ""))
    if not ok:
        failures.append(message)
    return ok

# The metric names: this script's list against the metrics server's `points`.
expected = {}
for line in os.environ["KKR_EXPECTED_METRICS"].split("\n"):
    if line.strip():
        kind, name = line.split()
        expected[name] = kind
source = open(source_path, encoding="utf-8").read()
pushes = re.findall(
    r'push\(\s*"(kkr_\w+)",\s*"(?:[^"\\]|\\.)*",\s*(None|Some\((?:MetricUnit::)?(Bytes|Seconds)\)),'
    r'\s*&(?:with\([^)]*\)|[^,]+),\s*(C|G|H|Value::Counter|Value::Gauge|Value::Histogram)\(', source)
exposed = {}
for base, _, unit, value in pushes:
    kind = {"C": "counter", "G": "gauge", "H": "histogram"}[value.split("::")[-1][0]]
    name = base + (f"_{unit.lower()}" if unit else "") + ("_total" if kind == "counter" else "")
    exposed[name] = kind
check(exposed == expected,
      f"src/metrics_server.rs exposes the {len(expected)} series this script expects ({len(exposed)} found)",
      "only in the source: " + ", ".join(f"{n} ({k})" for n, k in sorted(exposed.items()) if expected.get(n) != k)
      + "; only here: " + ", ".join(f"{n} ({k})" for n, k in sorted(expected.items()) if exposed.get(n) != k))

allowed = set()
for name, kind in expected.items():
    allowed |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}

def unknown_metrics(text):
    return sorted({m for m in re.findall(r"\bkkr_[a-z0-9_]+", text) if m not in allowed})

rules_text = open(rules_path, encoding="utf-8").read()
bad = unknown_metrics(rules_text)
check(not bad, "every kkr_ series in alerts.yml is exposed", "unknown: " + ", ".join(bad))

# The dashboard.
try:
    dashboard = json.load(open(dashboard_path, encoding="utf-8"))
    check(True, f"{os.path.basename(dashboard_path)} is valid JSON")
except ValueError as e:
    check(False, f"{os.path.basename(dashboard_path)} is valid JSON", str(e))
    sys.exit(1)
check(isinstance(dashboard.get("title"), str) and isinstance(dashboard.get("panels"), list)
      and isinstance(dashboard.get("schemaVersion"), int),
      "it is a Grafana dashboard model (title, schemaVersion, panels)")
if failures:
    sys.exit(1)

variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
check(variables.get("datasource", {}).get("type") == "datasource"
      and variables["datasource"].get("query") == "prometheus",
      "a `datasource` variable picks the Prometheus data source")
for name in ("topic", "shard"):
    check(variables.get(name, {}).get("type") == "query", f"a `{name}` variable lists the {name}s")

def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))

panels = list(all_panels(dashboard["panels"]))
ids = [p.get("id") for p in panels]
check(len(ids) == len(set(ids)) and None not in ids, f"{len(panels)} panels, each with its own id")
check(all({"x", "y", "w", "h"} <= set(p.get("gridPos", {})) for p in panels), "every panel has a gridPos")
check(all(p.get("type") in ("row", "timeseries", "stat") for p in panels), "every panel is a row, a time series or a stat")

# Every query: (where, expression). Variable queries are label_values(selector, label).
queries = []
for p in panels:
    if p.get("type") == "row":
        continue
    targets = p.get("targets", [])
    check(bool(targets), f"panel {p.get('id')} ({p.get('title')}) has queries", quiet=True)
    uses = [p.get("datasource")] + [t.get("datasource") for t in targets]
    check(all(d == {"type": "prometheus", "uid": "${datasource}"} for d in uses),
          f"panel {p.get('id')} ({p.get('title')}) queries the `datasource` variable", quiet=True)
    for t in targets:
        queries.append((f"panel {p['id']} ({p.get('title')}) {t.get('refId')}", t.get("expr", "")))
check(not failures, "every panel has queries, all on the `datasource` variable")
for name, v in variables.items():
    if v.get("type") == "query":
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else q or ""
        m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", q)
        check(m is not None, f"variable {name}: label_values(<selector>, <label>)", f"query: {q!r}")
        if m:
            queries.append((f"variable {name}", m.group(1)))

# The dashboard's variables, replaced as Grafana would for one topic and one shard.
samples = {"topic": "orders", "shard": "shardId-000000000001", "__rate_interval": "1m",
           "__interval": "30s", "__range": "6h", "__range_s": "21600", "__interval_ms": "30000"}
defined = set(variables) | {k for k in samples if k.startswith("__")}
rules = []
good = 0
for i, (where, expr) in enumerate(queries):
    referenced = set(re.findall(r"\$\{?(\w+)", expr))
    concrete = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)",
                      lambda m: samples.get(m.group(1) or m.group(2), m.group(0)), expr)
    bad = unknown_metrics(concrete)
    results = [
        check(bool(expr.strip()), f"{where}: has an expression", quiet=True),
        check(referenced <= defined, f"{where}: every variable it uses is defined",
              "undefined: " + ", ".join(sorted(referenced - defined)), quiet=True),
        check(not bad, f"{where}: every kkr_ series it reads is exposed", "unknown: " + ", ".join(bad), quiet=True),
        check(re.search(r"\bkkr_", concrete) is not None, f"{where}: reads a kkr_ series", quiet=True),
    ]
    good += all(results)
    rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
    queries[i] = (where, concrete)
check(good == len(queries), f"{good} of {len(queries)} queries (panel targets, variables) read kkr_ series that "
      "are exposed, with variables that are defined")

# promtool parses every expression: as the recording rules of a throwaway rule file (JSON is
# YAML), then one file per expression to name the ones that fail.
rule_file = os.path.join(scratch, "dashboard-queries.yml")
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(rule_file, "w"), indent=1)
run = subprocess.run([promtool, "check", "rules", rule_file], capture_output=True, text=True)
if run.returncode == 0:
    check(True, f"promtool parses all {len(rules)} PromQL expressions of the dashboard")
else:
    for i, (where, concrete) in enumerate(queries):
        one = os.path.join(scratch, f"query-{i}.yml")
        json.dump({"groups": [{"name": "q", "rules": [rules[i]]}]}, open(one, "w"))
        r = subprocess.run([promtool, "check", "rules", one], capture_output=True, text=True)
        check(r.returncode == 0, f"{where}: promtool parses it",
              (r.stdout + r.stderr).strip().replace("\n", "\n      ") + f"\n      expression: {concrete}")
    check(False, "promtool parses every PromQL expression of the dashboard",
          (run.stdout + run.stderr).strip().replace("\n", "\n      "))
sys.exit(1 if failures else 0)
PYTHON
}

step "metric names (src/metrics_server.rs), and the dashboard deploy/grafana/kinesis-kafka-replicator.json"
mkdir -p -- "$work/main"
check_names_and_dashboard "$DASHBOARD" "$RULES" "$SERVER_SOURCE" "$promtool" "$work/main" ||
    die "the dashboard or the metric names are not right (FAIL lines above)"

# ---- 5: live, against the real metrics server and a real Prometheus ------------------------
prometheus=$(find_tool prometheus "${PROMETHEUS:-}")
binary=${KKR_BIN:-}
if [[ -z $binary ]]; then
    for candidate in "$ROOT/target/release/kinesis-kafka-replicator" "$ROOT/target/debug/kinesis-kafka-replicator"; do
        if [[ -x $candidate && (-z $binary || $candidate -nt $binary) ]]; then binary=$candidate; fi
    done
fi
if [[ -z $binary ]]; then
    command -v cargo >/dev/null || die "no kinesis-kafka-replicator binary (KKR_BIN, target/) and no cargo to build one"
    step "building kinesis-kafka-replicator (cargo build) for the live check"
    (cd -- "$ROOT" && cargo build --locked --bin kinesis-kafka-replicator) || die "cargo build failed (above)"
    binary=$ROOT/target/debug/kinesis-kafka-replicator
fi
[[ -x $binary ]] || die "KKR_BIN=$binary is not an executable"
step "live: $binary metrics, two stand-in shards, scraped by $("$prometheus" --version 2>&1 | head -n1)"
read -r metrics_port prometheus_port < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
# The server exits when the pid it watches (the daemon's, under run.sh) is gone: a sleep
# of ours stands in for the daemon.
sleep 600 &
started+=("$!")
"$binary" metrics --socket "$work/metrics.sock" --listen "127.0.0.1:$metrics_port" --watch-pid "$!" \
    >"$work/server.log" 2>&1 &
started+=("$!")
for _ in $(seq 100); do
    [[ -S $work/metrics.sock ]] && break
    sleep 0.1
done
[[ -S $work/metrics.sock ]] || die "the metrics server did not start:" "$(cat -- "$work/server.log")"
# Two shard children reporting as src/metrics.rs's Snapshot (a renamed field would leave
# series missing below): one healthy, one waiting for Kafka with a message refused and one
# dead-lettered every second.
python3 - "$work/metrics.sock" >"$work/children.log" 2>&1 <<'PYTHON' &
import json, socket, sys, threading, time
def child(shard, troubled):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    start, n = int(time.time() * 1000), 0
    while True:
        n += 1
        latency = [0, 0, 0, 0, 10 * n, 50 * n, 90 * n] + [95 * n] * 9
        s.sendall((json.dumps({
            "shard": shard, "topic": "orders", "pid": 4242,
            "state": "waiting_for_kafka" if troubled else "processing",
            "records_received": 100 * n, "bytes_received": 10000 * n, "messages_acknowledged": 95 * n,
            "records_in_flight": 5, "bytes_in_flight": 500, "records_dropped": n, "records_skipped": n,
            "messages_dead_lettered": n * troubled, "messages_produced_again": n, "messages_copied": n,
            "checkpoint_attempts": n, "checkpoints": n, "checkpoint_failures": {"ThrottlingException": 1},
            "last_checkpoint": "49590/0", "last_checkpoint_unix_ms": start, "millis_behind_latest": 1000,
            "delivery_failures": {"MessageSizeTooLarge": n} if troubled else {},
            "producer_errors": {"AllBrokersDown": 1}, "producer_queue_messages": 7,
            "broker_rtt_seconds": {"b-1:9092/1": 0.002},
            "replication_latency": {"buckets": latency, "count": 95 * n, "sum": 40.0 * n},
            "batch_duration": {"buckets": [5 * n] * 16, "count": 5 * n, "sum": 0.01 * n},
            "unix_ms": int(time.time() * 1000)}) + "\n").encode())
        time.sleep(1)
for shard, troubled in (("shardId-000000000000", 0), ("shardId-000000000001", 1)):
    threading.Thread(target=child, args=(shard, troubled), daemon=True).start()
time.sleep(600)
PYTHON
started+=("$!")
cat >"$work/prometheus.yml" <<YAML
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: ["$RULES"]
scrape_configs:
  - job_name: kinesis-kafka-replicator
    static_configs: [{targets: ["127.0.0.1:$metrics_port"], labels: {namespace: check, pod: replicator-0}}]
YAML
"$prometheus" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prometheus_port" >"$work/prometheus.log" 2>&1 &
started+=("$!")
live_ok=1
python3 - "$prometheus_port" "$DASHBOARD" <<'PYTHON' || live_ok=0
import json, re, sys, time, urllib.parse, urllib.request
port, dashboard_path = sys.argv[1:3]
def api(path, **query):
    url = f"http://127.0.0.1:{port}/api/v1/{path}" + ("?" + urllib.parse.urlencode(query) if query else "")
    return json.load(urllib.request.urlopen(url, timeout=10))["data"]
failures = []
def check(ok, message, detail=""):
    print(("ok    " if ok else "FAIL  ") + message + (f"\n      {detail}" if detail and not ok else ""))
    if not ok:
        failures.append(message)
# 20 scrapes (the rates over 10 s need a few), within a minute.
deadline = time.time() + 60
scrapes = 0
while time.time() < deadline:
    try:
        result = api("query", query="count_over_time(kkr_shards[30s])")["result"]
        scrapes = int(result[0]["value"][1]) if result else 0
    except OSError:
        scrapes = 0
    if scrapes >= 20:
        break
    time.sleep(1)
check(scrapes >= 20, f"Prometheus scraped the metrics server ({scrapes} scrapes of kkr_shards)")
if failures:
    sys.exit(1)
rules = [r for g in api("rules")["groups"] for r in g["rules"]]
bad = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
check(len(rules) > 0 and not bad, f"all {len(rules)} alerting rules evaluate without error on the scraped series",
      "; ".join(bad))
firing = sorted((r["name"], a["labels"].get("shard", "")) for r in rules for a in r.get("alerts", [])
                if a["state"] == "firing")
want = [("KinesisKafkaDeadLetters", "shardId-000000000001"),
        ("KinesisKafkaDeliveryFailures", "shardId-000000000001")]
check(firing == want, "firing: KinesisKafkaDeadLetters and KinesisKafkaDeliveryFailures, for the troubled shard only",
      f"firing: {firing}")
dashboard = json.load(open(dashboard_path))
values = {"topic": "orders", "shard": "shardId-000000000001", "__rate_interval": "10s"}
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
empty, count = [], 0
for p in panels(dashboard["panels"]):
    for t in p.get("targets", []):
        count += 1
        expr = re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], t["expr"])
        if not api("query", query=expr)["result"]:
            empty.append(f"{p['title']} {t['refId']}: {expr}")
check(count > 0 and not empty, f"all {count} dashboard queries return series from the scrape", "\n      ".join(empty))
sys.exit(1 if failures else 0)
PYTHON
((live_ok)) || die "the live check failed (FAIL lines above)" \
    "metrics server: $(tail -n5 -- "$work/server.log")" "Prometheus: $(tail -n5 -- "$work/prometheus.log")"
for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
for pid in "${started[@]}"; do wait "$pid" 2>/dev/null || true; done
started=()

# ---- 6: negative controls ---------------------------------------------------------------------
step "negative controls: broken copies must each be rejected"
controls=0
# Arguments: a name, a sed expression. A copy of alerts.yml broken so must fail its tests.
rules_must_fail() {
    local name=$1 expression=$2 copy=$work/rules-$controls
    controls=$((controls + 1))
    mkdir -p -- "$copy"
    cp -- "$RULES" "$RULE_TESTS" "$copy/"
    sed -i -e "$expression" "$copy/alerts.yml"
    cmp -s -- "$RULES" "$copy/alerts.yml" &&
        die "negative control '$name': the sed expression changed nothing in alerts.yml; update the control"
    if "$promtool" test rules "$copy/alerts_test.yml" >"$copy/log" 2>&1; then
        die "negative control '$name' passed the alerts' unit tests; they would let it through"
    fi
    printf 'rejected as expected: %-62s  %s\n' "$name" \
        "$( (grep -m1 'alertname:' "$copy/log" || grep -m1 -E 'FAILED|error' "$copy/log") | sed 's/^ *//' | cut -c1-90)"
}
rules_must_fail "NoCheckpoint without its 'has work' condition (idle shards)" \
    's/kkr_records_in_flight > 0$/kkr_records_in_flight >= 0/'
rules_must_fail "LagGrowing at 50 minutes instead of 5" \
    's|kkr_millis_behind_latest / 1000 > 300$|kkr_millis_behind_latest / 1000 > 3000|'
rules_must_fail "LagGrowing without 'rising' (a shard catching up)" \
    's/deriv(kkr_millis_behind_latest\[15m\]) > 0$/deriv(kkr_millis_behind_latest[15m]) > -1e9/'
rules_must_fail "DeliveryFailures missing a child that failed and exited" \
    's/(kkr_delivery_failures_total > 0 unless kkr_delivery_failures_total offset 10m)/(kkr_delivery_failures_total < 0)/'
rules_must_fail "DeadLetters firing for a new child without any" \
    's/(kkr_messages_dead_lettered_total > 0 unless/(kkr_messages_dead_lettered_total >= 0 unless/'
rules_must_fail "WaitingForKafka after 5 minutes instead of 10" \
    '/^      - alert: KinesisKafkaShardWaitingForKafka$/,/for:/s/for: 10m/for: 5m/'
rules_must_fail "CheckpointFailures counting ShutdownException (a moved lease)" \
    's/{error!~"ShutdownException|ThrottlingException|/{error!~"ThrottlingException|/g'
# shellcheck disable=SC2016 # a Prometheus template, not a shell expansion
rules_must_fail "a summary template naming a label that is not there" \
    '0,/summary: "Shard {{ $labels.shard }}/s//summary: "Shard {{ $labels.shard_id }}/'

# Arguments: a name, a Python expression over `d` (the dashboard) that breaks it.
dashboard_must_fail() {
    local name=$1 mutation=$2 copy=$work/dashboard-$controls
    controls=$((controls + 1))
    mkdir -p -- "$copy"
    python3 - "$DASHBOARD" "$copy/dashboard.json" "$mutation" <<'PYTHON'
import json, sys
d = json.load(open(sys.argv[1]))
exec(sys.argv[3])
json.dump(d, open(sys.argv[2], "w"))
PYTHON
    if check_names_and_dashboard "$copy/dashboard.json" "$RULES" "$SERVER_SOURCE" "$promtool" "$copy" \
        >"$copy/log" 2>&1; then
        die "negative control '$name' was accepted; the dashboard check would let it through"
    fi
    printf 'rejected as expected: %-62s  %s\n' "$name" "$(grep -m1 '^FAIL' "$copy/log" | cut -c1-90)"
}
dashboard_must_fail "a PromQL expression that does not parse" \
    'd["panels"][2]["targets"][0]["expr"] += ")"'
dashboard_must_fail "a series that is not exposed (kkr_x_shards)" \
    'p = [p for p in d["panels"] if p.get("targets")][1]; p["targets"][0]["expr"] = p["targets"][0]["expr"].replace("kkr_", "kkr_x_", 1)'
# shellcheck disable=SC2016 # Grafana variables, not shell expansions
dashboard_must_fail "an undefined variable (\$region)" \
    'p = [p for p in d["panels"] if p.get("targets")][3]; p["targets"][0]["expr"] = p["targets"][0]["expr"].replace("$shard", "$region")'
dashboard_must_fail "a panel on a fixed data source" \
    'p = [p for p in d["panels"] if p.get("targets")][4]; p["datasource"] = {"type": "prometheus", "uid": "abc"}'
sed 's/"kkr_shards"/"kkr_shard_count"/' "$SERVER_SOURCE" >"$work/metrics_server.rs"
cmp -s -- "$SERVER_SOURCE" "$work/metrics_server.rs" &&
    die "negative control 'a series renamed in the source': the sed expression changed nothing; update the control"
if check_names_and_dashboard "$DASHBOARD" "$RULES" "$work/metrics_server.rs" "$promtool" "$work" >"$work/renamed.log" 2>&1; then
    die "negative control 'a series renamed in src/metrics_server.rs' was accepted"
fi
controls=$((controls + 1))
printf 'rejected as expected: %-62s  %s\n' "a series renamed in src/metrics_server.rs" "$(grep -m1 '^FAIL' "$work/renamed.log" | cut -c1-90)"
printf '%s\n' '{"title": "not closed"' >"$work/broken.json"
if check_names_and_dashboard "$work/broken.json" "$RULES" "$SERVER_SOURCE" "$promtool" "$work" \
    >"$work/broken.log" 2>&1; then
    die "negative control 'the dashboard not JSON' was accepted"
fi
controls=$((controls + 1))
printf 'rejected as expected: %-62s  %s\n' "the dashboard not JSON" "$(grep -m1 '^FAIL' "$work/broken.log" | cut -c1-90)"

printf '\ncheck-observability: alerts, their tests and the dashboard are valid (%s); %s broken copies rejected\n' \
    "$version" "$controls"
