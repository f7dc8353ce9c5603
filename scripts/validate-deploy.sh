#!/usr/bin/env bash
# Validates the Kubernetes deployment in deploy/kubernetes/ (docs/kubernetes.md), offline:
#
#   1. renders the kustomization with kustomize, as `kubectl apply -k` would;
#   2. validates every rendered resource against the Kubernetes OpenAPI schemas, strictly
#      (unknown fields are errors), with kubernetes-validate from PyPI, which ships the
#      schemas in its package: no network once installed;
#   3. checks what a schema cannot: terminationGracePeriodSeconds exceeds the daemon's
#      shutdownGraceMillis, the memory limit holds the JVM heap, the container port, the
#      probes (HTTP GET /healthz) and the scrape annotations all use METRICS_PORT, the
#      startup probe outlasts run.sh's checks, the ServiceAccount carries the IRSA
#      annotation, selectors match, every manifest is listed in the kustomization, and
#      iam-policy.json is valid JSON with the statements the KCL daemon and MSK IAM need;
#   4. proves that those checks can fail: a few deliberately broken copies of the tree
#      (an unknown field, a misspelled kind, a grace period too short, a probe or a port
#      that does not match METRICS_PORT, a policy statement missing) must each be rejected.
#
#   scripts/validate-deploy.sh        (from any directory; exit 0 when all is well)
#
# The validator and kustomize are installed on first use under KKR_CACHE (default
# ~/.cache/kinesis-kafka-replicator): a Python virtualenv with kubernetes-validate from
# PyPI, and kustomize built with `go install` from the Go module proxy. Either failing to
# install stops the script with a message saying what to do.
set -Eeuo pipefail

readonly KUBERNETES_VALIDATE_VERSION=1.37.0
readonly KUSTOMIZE_VERSION=v5.7.1
# The oldest Kubernetes these manifests claim to work on, and the newest the validator
# knows (kubernetes-validate 1.37.0 bundles the schemas of 1.25 to 1.37).
readonly KUBERNETES_VERSIONS=(1.29.0 1.37.0)

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly ROOT
readonly DEPLOY=$ROOT/deploy/kubernetes
readonly KCL_TEMPLATE=$ROOT/kcl.properties.template
cache=${KKR_CACHE:-$HOME/.cache/kinesis-kafka-replicator}/validate-deploy

die() {
    printf 'validate-deploy: error: %s\n' "$1" >&2
    shift
    local line
    for line in "$@"; do printf '  %s\n' "$line" >&2; done
    exit 1
}
step() { printf '\n== %s\n' "$*"; }

# ---- the tools ----------------------------------------------------------------------------
venv=$cache/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION
validator=$venv/bin/kubernetes-validate
python=$venv/bin/python
if [[ ! -x $validator ]]; then
    step "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION from PyPI into $venv"
    rm -rf -- "$venv"
    mkdir -p -- "$cache"
    python3 -m venv "$venv" ||
        die "cannot create a Python virtualenv at $venv" \
            "python3 with its venv module is needed (Debian: apt-get install python3-venv)"
    if ! "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"; then
        rm -rf -- "$venv"
        die "pip could not install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION (output above)" \
            "the validator is required; nothing was validated"
    fi
fi
installed=$("$validator" --version) || die "$validator does not run; delete $venv and retry"
[[ $installed == "$KUBERNETES_VALIDATE_VERSION" ]] ||
    die "$validator is version $installed, expected $KUBERNETES_VALIDATE_VERSION; delete $venv and retry"

kustomize=${KUSTOMIZE:-$cache/kustomize-$KUSTOMIZE_VERSION/kustomize}
if [[ ! -x $kustomize ]]; then
    [[ -z ${KUSTOMIZE:-} ]] || die "KUSTOMIZE=$KUSTOMIZE is not an executable"
    go=$(command -v go || true)
    [[ -n $go || ! -x /usr/local/go/bin/go ]] || go=/usr/local/go/bin/go
    [[ -n $go ]] ||
        die "kustomize $KUSTOMIZE_VERSION is not installed and there is no Go toolchain to build it" \
            "install Go (Debian: apt-get install golang-go), or point KUSTOMIZE at a kustomize binary"
    step "building kustomize $KUSTOMIZE_VERSION (go install, Go module proxy) into $(dirname -- "$kustomize")"
    GOBIN=$(dirname -- "$kustomize") "$go" install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" ||
        die "go install sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION failed (output above)" \
            "kustomize is required to render deploy/kubernetes; nothing was validated"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/validate-deploy.XXXXXX")
trap 'rm -rf -- "$work"' EXIT

# ---- the checks schemas cannot make (Python with the validator's own PyYAML) ---------------
# Arguments: the rendered manifests, the kustomization directory, the IAM policy, the KCL
# properties template. Prints one line per check; exits 1 on the first failed group.
consistency_checks() {
    "$python" - "$@" <<'PYTHON'
import json, os, re, sys
import yaml

rendered, tree, policy_path, kcl_template = sys.argv[1:5]
failures = []

def check(ok, message):
    print(("ok    " if ok else "FAIL  ") + message)
    if not ok:
        failures.append(message)

def mebibytes(quantity):
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024,
             "k": 1000 / 1048576, "M": 1e6 / 1048576, "G": 1e9 / 1048576}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(quantity))
    if not m or (m.group(2) and m.group(2) not in units):
        raise ValueError(f"cannot read the quantity {quantity!r}")
    return float(m.group(1)) * (units[m.group(2)] if m.group(2) else 1 / 1048576)

docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d.get("kind"), []).append(d)

def one(kind):
    found = by_kind.get(kind, [])
    check(len(found) == 1, f"exactly one {kind} in the rendered manifests (found {len(found)})")
    return found[0] if len(found) == 1 else None

# Every manifest in the directory is rendered, so none escapes validation.
kustomization = yaml.safe_load(open(os.path.join(tree, "kustomization.yaml")))
listed = set(kustomization.get("resources", []))
present = {f for f in os.listdir(tree)
           if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml"}
check(present <= listed, "every manifest in deploy/kubernetes is listed in kustomization.yaml"
      + (f" (not listed: {', '.join(sorted(present - listed))})" if present - listed else ""))

deployment, service_account = one("Deployment"), one("ServiceAccount")
config_map, pdb = one("ConfigMap"), one("PodDisruptionBudget")
if failures:
    sys.exit(1)

pod = deployment["spec"]["template"]
spec = pod["spec"]
containers = spec["containers"]
check(len(containers) == 1, "the pod has one container (the replicator)")
container = containers[0]
config = config_map.get("data", {})
labels = pod["metadata"].get("labels", {})

# Selectors and names.
selects = lambda selector: all(labels.get(k) == v for k, v in selector["matchLabels"].items())
check(selects(deployment["spec"]["selector"]), "the Deployment's selector matches its pod labels")
check(selects(pdb["spec"]["selector"]), "the PodDisruptionBudget's selector matches the pod labels")
check(spec.get("serviceAccountName") == service_account["metadata"]["name"],
      "the pods run as the ServiceAccount of the manifests")
role = service_account["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn", "")
check(re.fullmatch(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+", role) is not None,
      f"the ServiceAccount has the IRSA annotation eks.amazonaws.com/role-arn ({role or 'missing'})")
sources = [("secret", s["secretRef"]["name"]) if "secretRef" in s else ("configmap", s["configMapRef"]["name"])
           for s in container.get("envFrom", [])]
check(sources == [("secret", "kinesis-kafka-replicator-env"), ("configmap", config_map["metadata"]["name"])],
      "envFrom reads the env file's Secret first, then the ConfigMap (whose keys win)")

# Graceful shutdown: the pod must outlive the daemon's shutdownGraceMillis.
grace_ms, grace_from = config.get("KCL_PROP_shutdownGraceMillis"), "the ConfigMap"
if grace_ms is None:
    grace_from = "kcl.properties.template"
    for line in open(kcl_template):
        m = re.match(r"\s*shutdownGraceMillis\s*=\s*(\d+)\s*$", line)
        if m:
            grace_ms = m.group(1)
check(grace_ms is not None and str(grace_ms).isdigit(), f"shutdownGraceMillis is set ({grace_from}: {grace_ms})")
if grace_ms is not None and str(grace_ms).isdigit():
    termination = spec.get("terminationGracePeriodSeconds", 30)
    margin = termination - int(grace_ms) / 1000
    check(margin >= 5, f"terminationGracePeriodSeconds {termination} exceeds shutdownGraceMillis "
          f"{grace_ms} ({grace_from}) by at least 5 s for the JVM's exit (margin {margin:g} s)")

# Memory: the limit holds the heap, the JVM outside it, and at least one shard's processor.
limits = container.get("resources", {}).get("limits", {})
heap = re.search(r"-Xmx(\d+)([kKmMgG]?)\b", config.get("JAVA_OPTS", ""))
check(heap is not None, "JAVA_OPTS in the ConfigMap fixes the JVM heap with -Xmx")
check("memory" in limits, "the container has a memory limit")
if heap and "memory" in limits:
    heap_mib = int(heap.group(1)) * {"": 1 / 1048576, "k": 1 / 1024, "m": 1, "g": 1024}[heap.group(2).lower()]
    limit_mib = mebibytes(limits["memory"])
    shards = int((limit_mib - heap_mib - 200) // 32)
    check(shards >= 1, f"memory limit {limit_mib:g} MiB = heap {heap_mib:g} + 200 outside the heap "
          f"+ 32 per shard: room for {shards} shard processors")

# The metrics endpoint and the probes. With METRICS_PORT (the ConfigMap wins over the env
# file), run.sh starts the metrics server on that port: the container port, the probes'
# /healthz and the scrape annotations must all name it. Without it (an overlay that turns
# metrics off) nothing listens, so the probes must be exec probes on the daemon's process
# and nothing may ask Prometheus to scrape.
metrics_port = config.get("METRICS_PORT")
probes = {name: container.get(name) for name in ("startupProbe", "readinessProbe", "livenessProbe")}
annotations = pod["metadata"].get("annotations") or {}
check(all(probes.values()), "startup, readiness and liveness probes are set")
if all(probes.values()):
    if metrics_port is None:
        check(all("MultiLangDaemon" in " ".join(p.get("exec", {}).get("command", [])) for p in probes.values()),
              "without METRICS_PORT every probe is an exec probe on the MultiLangDaemon process")
        check(not any(k.startswith("prometheus.io/") for k in annotations),
              "without METRICS_PORT no scrape annotations (nothing listens)")
    else:
        port_ok = re.fullmatch(r"\d{1,5}", str(metrics_port)) is not None and 1 <= int(metrics_port) <= 65535
        check(port_ok, f"METRICS_PORT={metrics_port!r} in the ConfigMap is a TCP port (1-65535), as run.sh requires")
        bind = str(config.get("METRICS_BIND", "0.0.0.0"))
        check(not (bind.startswith("127.") or bind in ("::1", "localhost")),
              f"METRICS_BIND={bind} is reachable from the kubelet and Prometheus (not loopback)")
        ports = container.get("ports", [])
        named = {p.get("name"): p for p in ports if p.get("name")}
        metrics = [p for p in ports if str(p.get("containerPort")) == str(metrics_port)]
        check(len(metrics) == 1 and metrics[0].get("protocol", "TCP") == "TCP",
              f"the container declares port {metrics_port} (TCP), the endpoint's")
        def target(probe):
            get = probe.get("httpGet") or {}
            port = get.get("port")
            port = named[port].get("containerPort") if port in named else port
            return get.get("scheme", "HTTP"), get.get("path"), str(port)
        for name, probe in probes.items():
            check(target(probe) == ("HTTP", "/healthz", str(metrics_port)) and "exec" not in probe,
                  f"{name} is an HTTP GET of /healthz on METRICS_PORT {metrics_port} "
                  f"(found {'exec' if 'exec' in probe else '%s %s on port %s' % target(probe)})")
        startup = probes["startupProbe"]
        window = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        check(window >= 150, f"the startup probe waits {window} s, at least 150 s: run.sh's Kafka check "
              "(up to 120 s) and the daemon's start come before /healthz answers")
        check(annotations.get("prometheus.io/scrape") == "true"
              and str(annotations.get("prometheus.io/port")) == str(metrics_port)
              and annotations.get("prometheus.io/path", "/metrics") == "/metrics",
              f"the pod is annotated for scraping /metrics on METRICS_PORT {metrics_port} "
              f"(scrape={annotations.get('prometheus.io/scrape')}, port={annotations.get('prometheus.io/port')}, "
              f"path={annotations.get('prometheus.io/path')})")

# The IAM policy: JSON, and the statements the daemon and MSK IAM need, on the right resources.
try:
    policy = json.load(open(policy_path))
    check(True, f"{os.path.basename(policy_path)} is valid JSON")
except ValueError as e:
    check(False, f"{os.path.basename(policy_path)} is valid JSON ({e})")
    sys.exit(1)
check(policy.get("Version") == "2012-10-17", "the policy's Version is 2012-10-17")
statements = policy.get("Statement", [])
sids = [s.get("Sid") for s in statements]
check(all(sids) and len(set(sids)) == len(sids), "every statement has its own Sid")
granted = {}
for s in statements:
    actions = s.get("Action", [])
    actions = [actions] if isinstance(actions, str) else actions
    resources = s.get("Resource", [])
    resources = [resources] if isinstance(resources, str) else resources
    check(s.get("Effect") == "Allow" and actions and resources and not any("*" in a for a in actions),
          f"statement {s.get('Sid')}: Allow, {len(actions)} actions (no wildcard), {len(resources)} resources")
    for a in actions:
        for r in resources:
            granted.setdefault(a, set()).add(r)
placeholders = set(re.findall(r"\$\{([A-Za-z_]+)\}", json.dumps(policy)))
known = {"AWS_REGION", "AWS_ACCOUNT_ID", "KCL_STREAM_NAME", "KCL_APPLICATION_NAME",
         "MSK_CLUSTER_NAME", "MSK_CLUSTER_UUID", "KAFKA_TOPIC", "KAFKA_DEAD_LETTER_TOPIC"}
check(placeholders <= known, "the policy's placeholders are the documented ones"
      + (f" (unknown: {', '.join(sorted(placeholders - known))})" if placeholders - known else ""))
arn = "arn:aws:{}:${{AWS_REGION}}:${{AWS_ACCOUNT_ID}}:{}"
stream = arn.format("kinesis", "stream/${KCL_STREAM_NAME}")
table = arn.format("dynamodb", "table/${KCL_APPLICATION_NAME}")
cluster = arn.format("kafka", "cluster/${MSK_CLUSTER_NAME}/${MSK_CLUSTER_UUID}")
topic = arn.format("kafka", "topic/${MSK_CLUSTER_NAME}/${MSK_CLUSTER_UUID}/${KAFKA_TOPIC}")
expected = {
    stream: ["kinesis:DescribeStreamSummary", "kinesis:ListShards", "kinesis:GetShardIterator",
             "kinesis:GetRecords", "kinesis:RegisterStreamConsumer"],
    stream + "/consumer/*": ["kinesis:DescribeStreamConsumer", "kinesis:SubscribeToShard"],
    table: ["dynamodb:CreateTable", "dynamodb:DescribeTable", "dynamodb:UpdateTable", "dynamodb:Scan",
            "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"],
    table + "/index/*": ["dynamodb:Query"],
    "*": ["cloudwatch:PutMetricData"],
    cluster: ["kafka-cluster:Connect", "kafka-cluster:DescribeCluster"],
    topic: ["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"],
}
for suffix in ("-CoordinatorState", "-WorkerMetricStats"):
    expected[table + suffix] = ["dynamodb:CreateTable", "dynamodb:DescribeTable", "dynamodb:Scan",
                                "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                                "dynamodb:DeleteItem"]
for resource, actions in expected.items():
    missing = [a for a in actions if resource not in granted.get(a, set())]
    check(not missing, f"granted on {resource}: {', '.join(a.split(':')[1] for a in actions)}"
          + (f" (missing: {', '.join(missing)})" if missing else ""))

sys.exit(1 if failures else 0)
PYTHON
}

# Renders and validates one tree. Arguments: kustomization directory, IAM policy, output
# directory. Returns non-zero when anything fails; prints what it checked.
validate_tree() {
    local tree=$1 policy=$2 out=$3 status=0
    mkdir -p -- "$out"
    if ! "$kustomize" build "$tree" >"$out/rendered.yaml" 2>"$out/kustomize.err"; then
        printf 'FAIL  kustomize build %s:\n' "$tree"
        sed 's/^/      /' "$out/kustomize.err"
        return 1
    fi
    local documents
    documents=$(grep -c '^kind:' "$out/rendered.yaml" || true)
    printf 'kustomize %s rendered %s resources\n' "$KUSTOMIZE_VERSION" "$documents"
    local versions=()
    local version
    for version in "${KUBERNETES_VERSIONS[@]}"; do versions+=(-k "$version"); done
    "$validator" --strict "${versions[@]}" "$out/rendered.yaml" >"$out/validate.out" 2>&1 || status=1
    sed "s|$out/||" "$out/validate.out"
    # kubernetes-validate only warns about a kind it has no schema for (a misspelled kind, a
    # custom resource) and exits 0: here that is a failure, as is any resource not passed
    # against every version.
    if grep -qE '^(WARN|ERROR|FATAL)' "$out/validate.out"; then status=1; fi
    local passed expected=$((documents * ${#KUBERNETES_VERSIONS[@]}))
    passed=$(grep -c '^INFO .* passed for resource' "$out/validate.out" || true)
    if ((passed != expected)); then
        printf 'FAIL  %s of %s resource-version pairs passed the schemas\n' "$passed" "$expected"
        status=1
    fi
    consistency_checks "$out/rendered.yaml" "$tree" "$policy" "$KCL_TEMPLATE" || status=1
    return "$status"
}

step "deploy/kubernetes: kustomize build, kubernetes-validate $KUBERNETES_VALIDATE_VERSION --strict against Kubernetes ${KUBERNETES_VERSIONS[*]}, consistency checks"
validate_tree "$DEPLOY" "$DEPLOY/iam-policy.json" "$work/main" ||
    die "deploy/kubernetes is not valid (FAIL and ERROR lines above)"

# ---- negative controls: each broken copy must be rejected ----------------------------------
step "negative controls: broken copies of deploy/kubernetes must each be rejected"
controls=0
# Arguments: a name, the file to break, a sed expression that breaks it.
must_fail() {
    local name=$1 file=$2 expression=$3
    local copy=$work/control-$controls
    controls=$((controls + 1))
    cp -R -- "$DEPLOY" "$copy"
    sed -i -e "$expression" "$copy/$file"
    if cmp -s -- "$DEPLOY/$file" "$copy/$file"; then
        die "negative control '$name': the sed expression changed nothing in $file; update the control"
    fi
    if validate_tree "$copy" "$copy/iam-policy.json" "$copy.out" >"$copy.log" 2>&1; then
        sed 's/^/  /' "$copy.log" >&2
        die "negative control '$name' was accepted; the validation above would let it through"
    fi
    printf 'rejected as expected: %-46s  %s\n' "$name" \
        "$(grep -m1 -E '^(FAIL|ERROR|WARN|FATAL)' "$copy.log" | sed "s|$copy.out/||" | cut -c1-150)"
}
must_fail "an unknown field in the Deployment" deployment.yaml \
    's/^  minReadySeconds: 30$/  minReadySeconds: 30\n  minReadySecond: 30/'
must_fail "a misspelled kind" poddisruptionbudget.yaml 's/^kind: PodDisruptionBudget$/kind: PodDisruptionBuget/'
must_fail "a wrong type (replicas as a string)" deployment.yaml 's/^  replicas: 2$/  replicas: "2"/'
must_fail "terminationGracePeriodSeconds below the grace" deployment.yaml \
    's/terminationGracePeriodSeconds: 45$/terminationGracePeriodSeconds: 30/'
must_fail "a shutdownGraceMillis the pod cannot outlive" configmap.yaml \
    's/KCL_PROP_shutdownGraceMillis: "30000"/KCL_PROP_shutdownGraceMillis: "60000"/'
must_fail "METRICS_PORT unset, probes still on /healthz" configmap.yaml '/^  METRICS_PORT: "9464"$/d'
must_fail "METRICS_PORT changed, the pod spec not" configmap.yaml 's/^  METRICS_PORT: "9464"$/  METRICS_PORT: "9465"/'
must_fail "METRICS_PORT not a port" configmap.yaml 's/^  METRICS_PORT: "9464"$/  METRICS_PORT: "metrics"/'
must_fail "METRICS_BIND on loopback" configmap.yaml 's/^  METRICS_PORT: "9464"$/  METRICS_PORT: "9464"\n  METRICS_BIND: 127.0.0.1/'
must_fail "the container port not METRICS_PORT" deployment.yaml 's/^              containerPort: 9464$/              containerPort: 9404/'
must_fail "the liveness probe on another path" deployment.yaml \
    '/^          livenessProbe:$/,/path:/s|path: /healthz|path: /status|'
must_fail "the readiness probe still an exec probe" deployment.yaml \
    '/^          readinessProbe:$/,/port: metrics/{s|^            httpGet:$|            exec:|;s|^              path: /healthz$|              command: [/bin/true]|;/^              port: metrics$/d}'
must_fail "a startup probe shorter than run.sh's checks" deployment.yaml \
    '/^          startupProbe:$/,/failureThreshold/s/failureThreshold: 36/failureThreshold: 12/'
must_fail "the scrape annotation on another port" deployment.yaml 's/prometheus.io\/port: "9464"/prometheus.io\/port: "9090"/'
must_fail "the IAM policy without dynamodb:Query" iam-policy.json '/"dynamodb:Query"/d'
must_fail "the IAM policy not JSON" iam-policy.json '0,/"Effect": "Allow",/s//"Effect": "Allow"/'
must_fail "a manifest not in the kustomization" kustomization.yaml '/  - poddisruptionbudget.yaml/d'

printf '\nvalidate-deploy: deploy/kubernetes is valid (kubernetes-validate %s, Kubernetes %s); %s broken copies rejected\n' \
    "$KUBERNETES_VALIDATE_VERSION" "${KUBERNETES_VERSIONS[*]}" "$controls"
