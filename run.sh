#!/usr/bin/env bash
# run.sh: start kinesis-kafka-replicator under the KCL MultiLangDaemon.
#
# The same entry point as the Python replicator: `docker run --env-file <env file> <image>`.
# It checks the environment, renders the daemon's properties, lets the processor check its
# own configuration and Kafka, finds (or fetches) the KCL jars, then replaces itself with
# the Java daemon, which starts one processor per shard lease. Run `run.sh --help`.
# `run.sh --local` instead runs the whole pipeline on this machine (scripts/local/quickstart.sh).
#
# Secrets (KAFKA_SASL_PASSWORD, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, ...) are never
# printed and never written to disk: the processor reads them from its environment.

set -Eeuo pipefail
# --local hands over to the quickstart with the caller's umask, not this one.
ORIGINAL_UMASK=$(umask)
readonly ORIGINAL_UMASK
umask 077

readonly PROG=run.sh
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
readonly SCRIPT_DIR
readonly MAIN_CLASS=software.amazon.kinesis.multilang.MultiLangDaemon
readonly CHECK_TIMEOUT_SECONDS=120
readonly MAVEN_GOAL=org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies

# Exit codes (also documented in --help).
readonly EXIT_KAFKA=1    # the processor's --check-config could not reach Kafka or the topic
readonly EXIT_CONFIG=2   # missing or invalid settings
readonly EXIT_RUNTIME=3  # a piece of the runtime is missing: binary, jars, java

usage() {
    cat <<'EOF'
Usage: run.sh [--dry-run]
       run.sh --local [--for SECONDS] [more quickstart options]

Starts kinesis-kafka-replicator under the KCL MultiLangDaemon, configured entirely from
environment variables (the Python replicator's env file works unchanged):

  required  KCL_STREAM_NAME, KCL_APPLICATION_NAME, KCL_REGION (or AWS_REGION),
            KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC
            (+ KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD with SASL;
            KAFKA_SASL_MECHANISM=AWS_MSK_IAM signs with the AWS credentials instead)
  optional  KCL_INITIAL_POSITION, KCL_AWS_CREDENTIALS_PROVIDER, KCL_LOG_LEVEL,
            KCL_PROP_<key>=<value> (any daemon property), KAFKA_*, CHECKPOINT_*,
            SLEEP_SECONDS, NUMBER_OF_SHARDS, AWS_* credentials,
            METRICS_PORT (Prometheus /metrics, /healthz, /status; METRICS_BIND, default
            0.0.0.0), OTEL_EXPORTER_OTLP_ENDPOINT (OTLP/HTTP push) and OTEL_*
  paths     REPLICATOR_BIN (the processor binary), REPLICATOR_CONFIG (its JSON config
            template), KCL_JARS_DIR (the daemon's jars), KCL_LOGBACK_CONFIG, JAVA_HOME,
            JAVA_OPTS, REPLICATOR_WORK_DIR (where rendered files go)

Steps: check the variables, render kcl.properties.template and logback.xml.template
(beside run.sh), run `kinesis-kafka-replicator --check-config` (Kafka reachable, topic
exists), find the jars in KCL_JARS_DIR or jars/ (fetching them with Maven from jars/pom.xml
when there are none), then exec the Java MultiLangDaemon.

  --dry-run      print the rendered properties (secrets redacted) as soon as they are
                 rendered, then do every check except fetching jars, and print the
                 command that would run; Java is not started
  --local        runs the whole pipeline on this machine: the KCL daemon, Kinesis and
                 DynamoDB emulators, Apache Kafka; see README. Needs none of the variables
                 above; every other argument goes to scripts/local/quickstart.sh
                 (run.sh --local --help lists its options)
  --for N        with --local: put records for N seconds, wait until they reached Kafka,
                 then stop everything (exit 0 only when no record is missing)
  -h, --help     this text

Exit codes: 0 ok (dry run), 1 Kafka check failed, 2 missing or invalid settings,
3 binary, jars or java missing. See docs/deployment.md for every variable.
EOF
}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() {
    local code=$1
    shift
    printf '%s: error: %s\n' "$PROG" "$1" >&2
    shift
    local line
    for line in "$@"; do printf '%s\n' "$line" >&2; done
    exit "$code"
}

# --local: the quickstart takes every other argument (its own --for, --help, ...) and needs
# none of the variables checked below.
for arg in "$@"; do
    if [[ $arg == --local ]]; then
        quickstart_args=()
        for other in "$@"; do
            [[ $other == --local ]] || quickstart_args+=("$other")
        done
        quickstart=$SCRIPT_DIR/scripts/local/quickstart.sh
        [[ -r $quickstart ]] || die "$EXIT_RUNTIME" "--local needs $quickstart, which is missing; run run.sh --local from a checkout of the repository."
        umask "$ORIGINAL_UMASK"
        exec bash "$quickstart" "${quickstart_args[@]}"
    fi
done

DRY_RUN=0
while (($#)); do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --for) die "$EXIT_CONFIG" "--for goes with --local: run.sh --local --for SECONDS (run.sh --help lists the options)" ;;
        -h | --help) usage; exit 0 ;;
        *) die "$EXIT_CONFIG" "unknown argument '$1' (run.sh --help lists the options)" ;;
    esac
    shift
done

upper() { printf '%s' "${1^^}"; }

# ------------------------------------------------------------------------------------------
# 1. Required variables: name every missing one, with what it is for, in one go.
# ------------------------------------------------------------------------------------------
missing=()
need() {
    if [[ -z "${!1:-}" ]]; then
        missing+=("$(printf '  %-26s %s' "$1" "$2")")
    fi
}
need KCL_STREAM_NAME "the Kinesis data stream to copy from (its name, not its ARN)"
need KCL_APPLICATION_NAME "the KCL application name, also the DynamoDB lease table that holds the checkpoints (reuse the Python replicator's to resume from its checkpoints)"
if [[ -z "${KCL_REGION:-}" && -z "${AWS_REGION:-}" && -z "${AWS_DEFAULT_REGION:-}" ]]; then
    need KCL_REGION "the AWS region of the stream and the lease table, e.g. eu-west-1 (or set AWS_REGION)"
fi
need KAFKA_BOOTSTRAP_SERVERS "the Kafka brokers to connect to, host:port[,host:port...]"
need KAFKA_TOPIC "the Kafka topic to write the records to (it must already exist)"
security_protocol=$(upper "${KAFKA_SECURITY_PROTOCOL:-PLAINTEXT}")
if [[ $security_protocol == SASL_* ]]; then
    need KAFKA_SASL_MECHANISM "the SASL mechanism, because KAFKA_SECURITY_PROTOCOL=$security_protocol: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or AWS_MSK_IAM"
    # AWS_MSK_IAM signs a token with the AWS credentials: no user name, no password.
    if [[ $(upper "${KAFKA_SASL_MECHANISM:-}") != AWS_MSK_IAM ]]; then
        need KAFKA_SASL_USERNAME "the SASL user name, because KAFKA_SECURITY_PROTOCOL=$security_protocol"
        need KAFKA_SASL_PASSWORD "the SASL password, because KAFKA_SECURITY_PROTOCOL=$security_protocol"
    fi
fi
if ((${#missing[@]})); then
    die "$EXIT_CONFIG" "cannot start: ${#missing[@]} required setting(s) missing or empty:" \
        "${missing[@]}" \
        "Set them in the env file given to 'docker run --env-file', or export them. The daemon was not started. See docs/deployment.md."
fi

# ------------------------------------------------------------------------------------------
# 2. Values the daemon would otherwise reject late (deep in a stack trace) or ignore.
# ------------------------------------------------------------------------------------------
invalid=()
bad() { invalid+=("  $1"); }

if [[ ! $KCL_STREAM_NAME =~ ^[a-zA-Z0-9_.-]{1,128}$ ]]; then
    if [[ $KCL_STREAM_NAME == arn:* ]]; then
        bad "KCL_STREAM_NAME is an ARN; set it to the stream's name (the part after 'stream/')"
    else
        bad "KCL_STREAM_NAME='$KCL_STREAM_NAME' is not a Kinesis stream name (1-128 of a-z A-Z 0-9 _ . -)"
    fi
fi
if [[ ! $KCL_APPLICATION_NAME =~ ^[a-zA-Z0-9_.-]{1,255}$ ]]; then
    bad "KCL_APPLICATION_NAME='$KCL_APPLICATION_NAME' cannot be a DynamoDB table name (a-z A-Z 0-9 _ . -)"
fi
if [[ -n "${KCL_REGION:-}" && ! $KCL_REGION =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]]; then
    bad "KCL_REGION='$KCL_REGION' is not an AWS region name such as eu-west-1"
fi
if [[ -n "${KCL_INITIAL_POSITION:-}" ]]; then
    KCL_INITIAL_POSITION=$(upper "$KCL_INITIAL_POSITION")
    case $KCL_INITIAL_POSITION in
        TRIM_HORIZON | LATEST) ;;
        AT_TIMESTAMP)
            bad "KCL_INITIAL_POSITION=AT_TIMESTAMP needs a time: leave KCL_INITIAL_POSITION unset and set KCL_PROP_initialPositionInStreamExtended=<epoch seconds>" ;;
        *) bad "KCL_INITIAL_POSITION='$KCL_INITIAL_POSITION' must be TRIM_HORIZON or LATEST" ;;
    esac
fi

# SDK v1 provider names do not exist in KCL 3.x: the daemon only logs "Unable to construct
# any provider" and fails later without saying why.
v2_name_for() {
    case $1 in
        DefaultAWSCredentialsProviderChain) echo DefaultCredentialsProvider ;;
        EC2ContainerCredentialsProviderWrapper) echo ContainerCredentialsProvider ;;
        AWSStaticCredentialsProvider) echo StaticCredentialsProvider ;;
        STSAssumeRoleSessionCredentialsProvider) echo StsAssumeRoleCredentialsProvider ;;
        ClasspathPropertiesFileCredentialsProvider | PropertiesFileCredentialsProvider) echo ProfileCredentialsProvider ;;
        *) return 1 ;;
    esac
}
if [[ -n "${KCL_AWS_CREDENTIALS_PROVIDER:-}" ]]; then
    IFS=, read -r -a providers <<<"$KCL_AWS_CREDENTIALS_PROVIDER"
    for provider in "${providers[@]}"; do
        provider_name=${provider%%|*}
        provider_name=${provider_name//[[:space:]]/}
        if v2=$(v2_name_for "${provider_name##*.}"); then
            bad "KCL_AWS_CREDENTIALS_PROVIDER: $provider_name is an AWS SDK v1 name, which KCL 3.x cannot load; use $v2"
        fi
    done
fi

if [[ -n "${METRICS_PORT:-}" ]]; then
    if [[ ! $METRICS_PORT =~ ^[0-9]{1,5}$ ]] || ((10#$METRICS_PORT < 1 || 10#$METRICS_PORT > 65535)); then
        bad "METRICS_PORT='$METRICS_PORT' must be a TCP port (1-65535) for the metrics endpoint, or unset to turn it off"
    fi
fi

kcl_log_level=$(upper "${KCL_LOG_LEVEL:-INFO}")
case $kcl_log_level in
    TRACE | DEBUG | INFO | WARN | ERROR | OFF) ;;
    WARNING) kcl_log_level=WARN ;;
    CRITICAL | FATAL) kcl_log_level=ERROR ;;
    *) bad "KCL_LOG_LEVEL='${KCL_LOG_LEVEL}' must be one of TRACE, DEBUG, INFO, WARN, ERROR, OFF" ;;
esac
case $kcl_log_level in
    TRACE | DEBUG) library_log_level=INFO ;;
    *) library_log_level=$kcl_log_level ;;
esac
# shellcheck disable=SC2034 # read by render() through ${!var}
KKR_LOG_LEVEL=$kcl_log_level
# shellcheck disable=SC2034
KKR_LIBRARY_LOG_LEVEL=$library_log_level

# Keys of the daemon's properties (MultiLangDaemonConfiguration and its beans, KCL 3.x).
# The daemon matches keys case-sensitively and ignores unknown ones silently; this list lets
# run.sh catch the misspellings. It is not exhaustive, so an unknown key is only a warning.
readonly KNOWN_KEYS="executableName applicationName streamName streamArn tableName workerId
regionName kinesisEndpoint dynamoDBEndpoint AwsCredentialsProvider
AwsCredentialsProviderDynamoDB AwsCredentialsProviderCloudWatch initialPositionInStream
initialPositionInStreamExtended retrievalMode maxRecords idleTimeBetweenReadsInMillis
retryGetRecordsInSeconds maxGetRecordsThreadPool millisBehindLatestThresholdForReducedTps
failoverTimeMillis enablePriorityLeaseAssignment shardSyncIntervalMillis
cleanupLeasesUponShardCompletion ignoreUnexpectedChildShards maxLeasesForWorker
maxLeasesToStealAtOneTime initialLeaseTableReadCapacity initialLeaseTableWriteCapacity
maxLeaseRenewalThreads listShardsBackoffTimeInMillis maxListShardsRetryAttempts
callProcessRecordsEvenForEmptyRecordList parentShardPollIntervalMillis shardPrioritization
skipShardSyncAtWorkerInitializationIfLeasesExist schedulerInitializationBackoffTimeMillis
taskBackoffTimeMillis metricsBufferTimeMillis metricsMaxQueueSize metricsLevel
metricsEnabledDimensions logWarningForTaskAfterMillis validateSequenceNumberBeforeCheckpointing
shutdownGraceMillis timeoutInSeconds maxActiveThreads processingLanguage
leaseAssignmentIntervalMillis leaseTableDeletionProtectionEnabled leaseTablePitrEnabled
clientVersionConfig coordinatorStateTableName coordinatorStateBillingMode
coordinatorStateReadCapacity coordinatorStateWriteCapacity
coordinatorStatePointInTimeRecoveryEnabled coordinatorStateDeletionProtectionEnabled
coordinatorStateTags isGracefulLeaseHandoffEnabled gracefulLeaseHandoffTimeoutMillis
workerMetricsTableName workerMetricsBillingMode workerMetricsReadCapacity
workerMetricsWriteCapacity workerMetricsPointInTimeRecoveryEnabled
workerMetricsDeletionProtectionEnabled workerMetricsTags
inMemoryWorkerMetricsCaptureFrequencyMillis workerMetricsReporterFreqInMillis
noOfPersistedMetricsPerWorkerMetrics disableWorkerMetrics maxThroughputPerHostKBps
dampeningPercentage reBalanceThresholdPercentage allowThroughputOvershoot
varianceBalancingFrequency workerMetricsEMAAlpha staleWorkerMetricsEntryCleanupDuration"
readonly KNOWN_PREFIXES="fanoutConfig. kinesisClient. dynamoDbClient. cloudWatchClient."

# Checks one KCL_PROP_ key; appends to `invalid` (silently ignored by the daemon) or warns.
check_key() {
    local key=$1 known prefix lower
    lower=${key,,}
    for known in $KNOWN_KEYS; do
        [[ $key == "$known" ]] && return 0
        if [[ $lower == "${known,,}" ]]; then
            # The daemon normalises only the credentials provider keys.
            [[ $lower == awscredentialsprovider* ]] && return 0
            bad "KCL_PROP_$key: the daemon matches keys case-sensitively and would silently ignore '$key'; did you mean '$known'?"
            return 0
        fi
    done
    for prefix in $KNOWN_PREFIXES; do
        [[ $key == "$prefix"?* ]] && return 0
        if [[ $lower == "${prefix,,}"?* ]]; then
            bad "KCL_PROP_$key: the daemon would silently ignore '$key'; the prefix is spelled '$prefix'"
            return 0
        fi
    done
    case $key in
        consumerName | consumerArn | maxDescribeStreamSummaryRetries | maxDescribeStreamConsumerRetries | registerStreamConsumerRetries | retryBackoffMillis)
            bad "KCL_PROP_$key: fan-out settings need the prefix: KCL_PROP_fanoutConfig.$key (or KCL_PROP_fanoutConfig__$key); a bare '$key' is silently ignored" ;;
        cloudWatchEndpoint | cloudwatchEndpoint)
            bad "KCL_PROP_$key: there is no such key; use KCL_PROP_cloudWatchClient.endpointOverride" ;;
        *)
            warn "KCL_PROP_$key: '$key' is not a daemon property run.sh knows; the daemon ignores unknown keys without a message, so check its spelling" ;;
    esac
}

# A value that would break the properties file, which the daemon reads as ISO-8859-1.
check_value() {
    local name=$1 value=$2 LC_ALL=C
    if [[ $value == *$'\n'* || $value == *$'\r'* ]]; then
        bad "$name contains a line break, which a properties file cannot hold"
    elif [[ $value == *[![:print:]]* ]]; then
        bad "$name contains non-ASCII or control characters; the daemon would read them as ISO-8859-1"
    fi
}

for name in KCL_STREAM_NAME KCL_APPLICATION_NAME KCL_REGION KCL_AWS_CREDENTIALS_PROVIDER; do
    [[ -n "${!name:-}" ]] && check_value "$name" "${!name}"
done

# KCL_PROP_<key>=<value> overrides, read from the real environment so that keys with dots
# (KCL_PROP_fanoutConfig.consumerName, not a valid shell name) work too.
declare -A prop_value=()
prop_keys=()
while IFS= read -r -d '' entry; do
    name=${entry%%=*}
    [[ $name == KCL_PROP_* ]] || continue
    value=${entry#*=}
    key=${name#KCL_PROP_}
    key=${key//__/.}
    if [[ ! $key =~ ^[A-Za-z][A-Za-z0-9_.]*$ ]]; then
        bad "$name: '$key' is not a valid property key (letters, digits, '_' and '.'; '__' stands for '.')"
        continue
    fi
    check_key "$key"
    check_value "$name" "$value"
    if [[ -z ${prop_value[$key]+set} ]]; then prop_keys+=("$key"); fi
    prop_value[$key]=$value
done < <(env -0 | LC_ALL=C sort -z)

if ((${#invalid[@]})); then
    die "$EXIT_CONFIG" "cannot start: ${#invalid[@]} setting(s) invalid:" "${invalid[@]}" \
        "The daemon was not started. See docs/deployment.md."
fi

# ------------------------------------------------------------------------------------------
# 3. The processor binary and its config. The daemon splits executableName on spaces, with
#    no shell and no quoting, so both paths must be absolute and free of spaces.
# ------------------------------------------------------------------------------------------
absolute() {
    local path=$1
    [[ $path == /* ]] || path="$PWD/$path"
    printf '%s' "$path"
}

if [[ -n "${REPLICATOR_BIN:-}" ]]; then
    replicator_bin=$REPLICATOR_BIN
    [[ $replicator_bin == */* ]] || replicator_bin=$(command -v -- "$replicator_bin" || true)
elif [[ -x "$SCRIPT_DIR/kinesis-kafka-replicator" ]]; then
    replicator_bin=$SCRIPT_DIR/kinesis-kafka-replicator
elif command -v kinesis-kafka-replicator >/dev/null 2>&1; then
    replicator_bin=$(command -v kinesis-kafka-replicator)
else
    replicator_bin=$SCRIPT_DIR/target/release/kinesis-kafka-replicator
fi
if [[ -z $replicator_bin || ! -f $replicator_bin || ! -x $replicator_bin ]]; then
    die "$EXIT_RUNTIME" "cannot find the kinesis-kafka-replicator binary${REPLICATOR_BIN:+ (REPLICATOR_BIN=$REPLICATOR_BIN)}." \
        "Build it with 'cargo build --release', put it on PATH, or set REPLICATOR_BIN to its path."
fi
replicator_bin=$(absolute "$replicator_bin")

replicator_config=$(absolute "${REPLICATOR_CONFIG:-$SCRIPT_DIR/replicator.template}")
if [[ ! -r $replicator_config ]]; then
    die "$EXIT_RUNTIME" "cannot read the processor config '$replicator_config'." \
        "Set REPLICATOR_CONFIG to the JSON config template, or keep replicator.template beside run.sh."
fi
for path in "$replicator_bin" "$replicator_config"; do
    if [[ $path == *" "* ]]; then
        die "$EXIT_RUNTIME" "'$path' contains a space; the daemon splits executableName on spaces and cannot start it. Move it or point REPLICATOR_BIN/REPLICATOR_CONFIG elsewhere."
    fi
done
if ! replicator_version=$("$replicator_bin" --version 2>&1); then
    die "$EXIT_RUNTIME" "'$replicator_bin --version' failed: ${replicator_version:-no output}"
fi
# shellcheck disable=SC2034 # read by render() through ${!var}
KKR_EXECUTABLE="$replicator_bin --config $replicator_config"
log "processor: ${replicator_version%%$'\n'*} ($replicator_bin), config $replicator_config"

# ------------------------------------------------------------------------------------------
# 4. Render the templates.
# ------------------------------------------------------------------------------------------
# Escapes a value for a .properties file (a backslash starts an escape there).
escape_properties() { printf '%s' "${1//\\/\\\\}"; }
escape_none() { printf '%s' "$1"; }

# render TEMPLATE ESCAPER: prints the template with ${VAR} and ${VAR:-default} replaced.
# A line that uses an unset or empty ${VAR} without a default is left out. Lines starting
# with '#' or '!' (properties comments) are copied as they are.
render() {
    local template=$1 escaper=$2 line out rest match var value pattern
    pattern='\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}'
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ $line =~ ^[[:space:]]*[#!] ]]; then
            printf '%s\n' "$line"
            continue
        fi
        out='' rest=$line
        while [[ $rest =~ $pattern ]]; do
            match=${BASH_REMATCH[0]}
            var=${BASH_REMATCH[1]}
            value=${!var:-}
            if [[ -z $value ]]; then
                [[ -n ${BASH_REMATCH[2]} ]] || continue 2 # optional and unset: leave the line out
                value=${BASH_REMATCH[3]}
            fi
            out+=${rest%%"$match"*}$("$escaper" "$value")
            rest=${rest#*"$match"}
        done
        printf '%s\n' "$out$rest"
    done <"$template"
}

# Applies the KCL_PROP_ overrides to rendered properties on stdin: a line with the same key
# is replaced (or dropped when the override is empty); other keys are appended.
apply_overrides() {
    local line key
    declare -A done_keys=()
    while IFS= read -r line; do
        if [[ ! $line =~ ^[[:space:]]*[#!] && $line =~ ^[[:space:]]*([^[:space:]=:]+) ]]; then
            key=${BASH_REMATCH[1]}
            if [[ -n ${prop_value[$key]+set} ]]; then
                done_keys[$key]=1
                [[ -n ${prop_value[$key]} ]] && printf '%s = %s\n' "$key" "$(escape_properties "${prop_value[$key]}")"
                continue
            fi
        fi
        printf '%s\n' "$line"
    done
    local header=0
    for key in "${prop_keys[@]}"; do
        [[ -n ${done_keys[$key]+set} || -z ${prop_value[$key]} ]] && continue
        if ((!header)); then
            printf '\n# From KCL_PROP_* environment variables.\n'
            header=1
        fi
        printf '%s = %s\n' "$key" "$(escape_properties "${prop_value[$key]}")"
    done
}

for template in "$SCRIPT_DIR/kcl.properties.template" "$SCRIPT_DIR/logback.xml.template"; do
    [[ -r $template ]] || die "$EXIT_RUNTIME" "missing template '$template'; run.sh must stay beside kcl.properties.template and logback.xml.template."
done

if [[ -n "${REPLICATOR_WORK_DIR:-}" ]]; then
    work_dir=$(absolute "$REPLICATOR_WORK_DIR")
    mkdir -p -- "$work_dir" || die "$EXIT_RUNTIME" "cannot create REPLICATOR_WORK_DIR '$work_dir'"
else
    work_dir=$(mktemp -d "${TMPDIR:-/tmp}/kinesis-kafka-replicator.XXXXXX") ||
        die "$EXIT_RUNTIME" "cannot create a work directory under ${TMPDIR:-/tmp}; set REPLICATOR_WORK_DIR"
fi
kcl_properties=$work_dir/kcl.properties
render "$SCRIPT_DIR/kcl.properties.template" escape_properties | apply_overrides >"$kcl_properties"

if [[ -n "${KCL_LOGBACK_CONFIG:-}" ]]; then
    logback_config=$(absolute "$KCL_LOGBACK_CONFIG")
    [[ -r $logback_config ]] || die "$EXIT_RUNTIME" "cannot read KCL_LOGBACK_CONFIG '$logback_config'"
else
    logback_config=$work_dir/logback.xml
    render "$SCRIPT_DIR/logback.xml.template" escape_none >"$logback_config"
fi
log "rendered $kcl_properties and $logback_config"

# Prints stdin with secrets replaced: values of secret-looking keys, the arguments of
# credentials providers, secret-looking -D system properties (JAVA_OPTS), and the literal
# value of any secret environment variable.
redact() {
    local line name secrets=()
    for name in KAFKA_SASL_PASSWORD AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_SECURITY_TOKEN; do
        [[ -n "${!name:-}" ]] && secrets+=("${!name}")
    done
    while IFS= read -r -d '' entry; do
        name=${entry%%=*}
        if [[ ${name^^} =~ (PASSWORD|SECRET|TOKEN) && -n ${entry#*=} ]]; then secrets+=("${entry#*=}"); fi
    done < <(env -0)
    while IFS= read -r line; do
        if [[ ! $line =~ ^[[:space:]]*[#!] && $line =~ ^([[:space:]]*([^[:space:]=:]+)[[:space:]]*[=:][[:space:]]*)(.*)$ ]]; then
            local head=${BASH_REMATCH[1]} key=${BASH_REMATCH[2]} value=${BASH_REMATCH[3]}
            if [[ ${key,,} =~ (secret|password|passwd|token|accesskey) ]]; then
                line="$head<redacted>"
            elif [[ ${key,,} == awscredentialsprovider* && $value == *'|'* ]]; then
                line="$head$(sed -E 's/\|[^,]*/|<redacted>/g' <<<"$value")"
            fi
        fi
        # A secret-looking system property on the Java command line (from JAVA_OPTS).
        if [[ ${line,,} =~ -d[^=[:space:]]*(secret|password|passwd|token|accesskey)[^=[:space:]]*= ]]; then
            line=$(sed -E 's/(-D[^=[:space:]]*(secret|password|passwd|token|accesskey)[^=[:space:]]*=)[^[:space:]]*/\1<redacted>/Ig' <<<"$line")
        fi
        for secret in "${secrets[@]}"; do
            line=${line//"$secret"/<redacted>}
        done
        printf '%s\n' "$line"
    done
}

# A dry run shows the properties now, before the Kafka check: they are worth seeing also
# where Kafka cannot be reached (the check below still fails the run then).
if ((DRY_RUN)); then
    {
        printf '# Dry run: rendered %s (secrets redacted):\n' "$kcl_properties"
        grep -Ev '^[[:space:]]*(#|$)' "$kcl_properties" || true
        printf '\n'
    } | redact
fi

# ------------------------------------------------------------------------------------------
# 5. Let the processor check its config and Kafka before the daemon starts any shard:
#    a bad broker address or a missing topic would otherwise crash every shard's child.
# ------------------------------------------------------------------------------------------
log "checking the processor config and Kafka: $replicator_bin --check-config"
check_cmd=("$replicator_bin" --check-config --config "$replicator_config")
if command -v timeout >/dev/null 2>&1; then
    check_cmd=(timeout --kill-after=5 "$CHECK_TIMEOUT_SECONDS" "${check_cmd[@]}")
fi
set +e
"${check_cmd[@]}"
check_status=$?
set -e
case $check_status in
    0) log "processor config and Kafka OK" ;;
    2) die "$EXIT_CONFIG" "the processor rejected its configuration (see above); the daemon was not started." ;;
    124 | 137) die "$EXIT_KAFKA" "the Kafka check did not finish within ${CHECK_TIMEOUT_SECONDS} s; the daemon was not started." ;;
    *) die "$EXIT_KAFKA" "the processor could not reach Kafka or the topic (see above; KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC, security settings); the daemon was not started." ;;
esac

# ------------------------------------------------------------------------------------------
# 6. The daemon's jars: KCL_JARS_DIR or jars/, fetched with Maven when there are none.
# ------------------------------------------------------------------------------------------
jars_dir=$(absolute "${KCL_JARS_DIR:-$SCRIPT_DIR/jars}")
pom=$SCRIPT_DIR/jars/pom.xml
shopt -s nullglob
jars=("$jars_dir"/*.jar)
if ((${#jars[@]} == 0)); then
    if ((DRY_RUN)); then
        log "no jars in $jars_dir: a real start would fetch them with Maven from $pom"
    else
        fetch_help=(
            "Fetch them where Maven Central (or your mirror) is reachable and copy them here:"
            "  mvn -f jars/pom.xml dependency:copy-dependencies    # fills jars/"
            "or point KCL_JARS_DIR at a directory that holds them. The Docker image has them built in."
        )
        if ! command -v mvn >/dev/null 2>&1; then
            die "$EXIT_RUNTIME" "no KCL jars (*.jar) in $jars_dir, and Maven (mvn) is not installed to fetch them." "${fetch_help[@]}"
        fi
        [[ -r $pom ]] || die "$EXIT_RUNTIME" "no KCL jars in $jars_dir, and no $pom to fetch them with."
        mkdir -p -- "$jars_dir" || die "$EXIT_RUNTIME" "cannot create $jars_dir"
        maven_log=$work_dir/maven.log
        log "no jars in $jars_dir: fetching the KCL MultiLangDaemon jars with Maven (log: $maven_log)"
        # Full plugin coordinates: with only the prefix, an offline Maven says "No plugin
        # found for prefix 'dependency'" instead of naming the download that failed.
        if ! mvn -B -Dstyle.color=never -f "$pom" "$MAVEN_GOAL" "-Djars.outputDirectory=$jars_dir" >"$maven_log" 2>&1; then
            reason=$(grep -E '^\[ERROR\] [^ ]' "$maven_log" | grep -Ev 'Re-run Maven|full stack trace|For more information|^\[ERROR\] \[Help ' |
                sed 's/ -> \[Help [0-9]*\]$//' | head -n 2 || true)
            die "$EXIT_RUNTIME" "Maven could not fetch the KCL jars into $jars_dir (no access to Maven Central or your mirror?)." \
                "${reason:-$(tail -n 5 "$maven_log")}" \
                "Full log: $maven_log" "${fetch_help[@]}"
        fi
        jars=("$jars_dir"/*.jar)
        ((${#jars[@]})) || die "$EXIT_RUNTIME" "Maven succeeded but left no jars in $jars_dir (log: $maven_log)."
        log "fetched ${#jars[@]} jars into $jars_dir"
    fi
fi
multilang_jars=("$jars_dir"/amazon-kinesis-client-multilang-*.jar)
if ((${#jars[@]} && ${#multilang_jars[@]} == 0)); then
    warn "no amazon-kinesis-client-multilang-*.jar in $jars_dir; Java will not find $MAIN_CLASS unless another jar provides it"
fi
shopt -u nullglob

# ------------------------------------------------------------------------------------------
# 7. Java. -Dfile.encoding=UTF-8: the daemon talks to the processor in the JVM's default
#    charset, so with any other (Java <= 17 under a non-UTF-8 locale) non-ASCII partition
#    keys would reach the processor as '?'.
# ------------------------------------------------------------------------------------------
if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    java_bin=$JAVA_HOME/bin/java
elif command -v java >/dev/null 2>&1; then
    java_bin=$(command -v java)
elif ((DRY_RUN)); then
    java_bin=java
    warn "no java on PATH or in JAVA_HOME; a real start would fail here"
else
    die "$EXIT_RUNTIME" "no Java runtime: java is not on PATH and JAVA_HOME is not set. Install a JRE (11 or later) or use the Docker image."
fi
read -r -a java_opts <<<"${JAVA_OPTS:-}"
java_cmd=("$java_bin" -Dfile.encoding=UTF-8 "${java_opts[@]}" -cp "$jars_dir/*"
    "$MAIN_CLASS" --properties-file "$kcl_properties" --log-configuration "$logback_config")

# ------------------------------------------------------------------------------------------
# 8. The metrics server (METRICS_PORT, OTLP): one per container, since each shard's child
#    cannot bind the port. The children report to it over a Unix socket; it watches this
#    pid, which stays the daemon's after exec, and exits with it.
# ------------------------------------------------------------------------------------------
metrics_cmd=()
if [[ -n "${METRICS_PORT:-}" || -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" || -n "${OTEL_EXPORTER_OTLP_METRICS_ENDPOINT:-}" ]]; then
    metrics_socket=$work_dir/metrics.sock
    metrics_cmd=("$replicator_bin" metrics --socket "$metrics_socket" --watch-pid "$$")
    if [[ -n "${METRICS_PORT:-}" ]]; then
        metrics_cmd+=(--listen "${METRICS_BIND:-0.0.0.0}:$METRICS_PORT")
    fi
fi

if ((DRY_RUN)); then
    if ((${#metrics_cmd[@]})); then
        printf '\n# The metrics server would run:\n%s\n' "$(printf '%q ' "${metrics_cmd[@]}")"
    fi
    {
        printf '\n# Dry run: nothing was started. The daemon would run:\n'
        printf '%q ' "${java_cmd[@]}"
        printf '\n'
    } | redact
    exit 0
fi

if ((${#metrics_cmd[@]})); then
    "${metrics_cmd[@]}" &
    metrics_pid=$!
    # Up when its socket exists; a taken port or a bad OTLP setting ends it at once.
    for _ in $(seq 50); do
        [[ -S $metrics_socket ]] && break
        kill -0 "$metrics_pid" 2>/dev/null || break
        sleep 0.1
    done
    [[ -S $metrics_socket ]] || die "$EXIT_CONFIG" "the metrics server did not start (see above: METRICS_PORT taken, or an OTEL_* setting); the daemon was not started."
    export KINESIS_KAFKA_REPLICATOR_METRICS_SOCKET=$metrics_socket
    log "metrics: ${METRICS_PORT:+http://${METRICS_BIND:-0.0.0.0}:$METRICS_PORT/metrics }${OTEL_EXPORTER_OTLP_ENDPOINT:+OTLP to $OTEL_EXPORTER_OTLP_ENDPOINT}"
fi

log "starting the KCL MultiLangDaemon: stream '$KCL_STREAM_NAME', application '$KCL_APPLICATION_NAME', ${#jars[@]} jars from $jars_dir"
exec "${java_cmd[@]}"
