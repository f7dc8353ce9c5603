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
#   5. proves those checks can fail: broken copies of the rules and of the dashboard must
#      each be rejected.
#
#   scripts/check-observability.sh        (from any directory; exit 0 when all is well)
#
# promtool comes from Debian's `prometheus` package (apt-get, as root) when it is not on
# PATH; where apt cannot install it, it is built with `go install` from the Go module proxy
# into KKR_CACHE (default ~/.cache/kinesis-kafka-replicator). PROMTOOL=/path/to/promtool
# uses that binary instead.
set -Eeuo pipefail

# The Go module of Prometheus 2.54.1 (its Go module versions are v0.x), for the fallback.
readonly PROMTOOL_GO_VERSION=v0.54.1

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

promtool=${PROMTOOL:-}
if [[ -n $promtool ]]; then
    [[ -x $promtool ]] || die "PROMTOOL=$promtool is not an executable"
elif command -v promtool >/dev/null; then
    promtool=$(command -v promtool)
elif [[ -x $cache/promtool-$PROMTOOL_GO_VERSION/promtool ]]; then
    promtool=$cache/promtool-$PROMTOOL_GO_VERSION/promtool
else
    # Debian's `prometheus` package ships /usr/bin/promtool. The daemon it also installs is
    # not started where there is no init system (containers, CI); where there is one, it is
    # disabled again below, since nothing here needs a Prometheus server.
    if apt_install prometheus && [[ -x /usr/bin/promtool ]]; then
        promtool=/usr/bin/promtool
        if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
            systemctl disable --now prometheus >/dev/null 2>&1 || true
        fi
    else
        go=$(command -v go || true)
        [[ -n $go || ! -x /usr/local/go/bin/go ]] || go=/usr/local/go/bin/go
        [[ -n $go ]] ||
            die "promtool is not installed, apt-get cannot install Debian's prometheus package here, and there is no Go toolchain to build it" \
                "install promtool (Debian: apt-get install prometheus), or point PROMTOOL at a promtool binary"
        target=$cache/promtool-$PROMTOOL_GO_VERSION
        step "building promtool (github.com/prometheus/prometheus $PROMTOOL_GO_VERSION, go install, Go module proxy) into $target"
        mkdir -p -- "$target"
        GOBIN=$target "$go" install "github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_GO_VERSION" ||
            die "go install github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_GO_VERSION failed (output above)" \
                "promtool is required; nothing was checked"
        promtool=$target/promtool
    fi
fi
version=$("$promtool" --version 2>&1 | head -n1) || die "$promtool does not run"
printf 'using %s (%s)\n' "$promtool" "$version"

work=$(mktemp -d "${TMPDIR:-/tmp}/check-observability.XXXXXX")
trap 'rm -rf -- "$work"' EXIT

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

# ---- 5: negative controls ---------------------------------------------------------------------
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
