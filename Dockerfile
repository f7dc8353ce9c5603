# syntax=docker/dockerfile:1
#
# kinesis-kafka-replicator: the Rust record processor plus the KCL MultiLangDaemon.
#
#   docker build -t kinesis-kafka-replicator .
#   docker run --env-file kinesis_kafka_replicator.env kinesis-kafka-replicator
#
# The env file of the Python replicator works unchanged. Give the container time to hand
# its shards over on stop (shutdownGraceMillis is 30 s): docker stop -t 45.

# Rust: any release at or above Cargo.toml's rust-version; pin one (e.g. 1.90) for
# reproducible images. The build runs on Debian bookworm (glibc 2.36, OpenSSL 3), the
# runtime on Ubuntu 24.04 (glibc 2.39, OpenSSL 3), so the binary's libraries are there.
ARG RUST_VERSION=1

# ---- 1. The processor ---------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-bookworm AS build
# librdkafka is compiled from source by rdkafka-sys (C toolchain, make, perl, OpenSSL, zlib).
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config perl libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole crate (see .dockerignore): Cargo.toml declares targets (examples, tests) whose
# files must exist for cargo to read the manifest at all.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && cp target/release/kinesis-kafka-replicator /kinesis-kafka-replicator

# ---- 2. The KCL MultiLangDaemon jars (the set amazon-kclpy 3.1.3 ships) --------------------
FROM maven:3.9-eclipse-temurin-21 AS jars
WORKDIR /jars
COPY jars/pom.xml ./pom.xml
RUN --mount=type=cache,target=/root/.m2 \
    mvn -B -q -Dstyle.color=never -f pom.xml dependency:copy-dependencies \
 && ls /jars/*.jar >/dev/null

# ---- 3. Runtime: a slim JRE, the binary, the jars, run.sh ---------------------------------
FROM eclipse-temurin:21-jre-noble AS runtime
# openssl pulls in libssl (SASL_SSL/SSL to Kafka); ca-certificates for TLS to Kafka and AWS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates openssl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 replicator \
 && useradd --system --uid 10001 --gid replicator --home-dir /app --shell /usr/sbin/nologin replicator
WORKDIR /app
COPY --from=build /kinesis-kafka-replicator /app/kinesis-kafka-replicator
COPY --from=jars /jars/*.jar /app/jars/
COPY jars/pom.xml /app/jars/pom.xml
# run.sh finds its templates beside itself.
COPY run.sh kcl.properties.template logback.xml.template replicator.template /app/
# Fail the build, not the first start, if the binary cannot load its libraries.
RUN chmod 0755 /app/run.sh /app/kinesis-kafka-replicator \
 && /app/kinesis-kafka-replicator --version
# Everything in /app stays owned by root: the replicator user only reads it. run.sh renders
# into a fresh directory under /tmp (no secrets there: the processor reads them from its
# environment).
USER replicator:replicator
ENV LANG=C.UTF-8 \
    KCL_JARS_DIR=/app/jars
# run.sh execs java, so the JVM is PID 1 and gets SIGTERM from `docker stop` directly: its
# shutdown hook hands the shards over (shutdownGraceMillis). Add --init to reap orphans.
ENTRYPOINT ["./run.sh"]
