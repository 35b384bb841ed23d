#!/usr/bin/env bash
# Installs what Sluice's build and tests need on a fresh Debian machine, skipping what is
# already there: libclang (RocksDB's bindgen), PostgreSQL 15, openssl, curl, Chromium (the
# console's browser test), a Python venv with the S3 (moto) and Elasticsearch-API
# (osmem-server, noida-db) servers the tests start themselves, the OpenAPI validators and
# Kafka clients (kcat, confluent-kafka, kafka-python), and the web console's npm packages and build (console/dist, embedded in the binary).
# Sourced by scripts/test and scripts/run; safe to run again.
set -euo pipefail

SLUICE_VENV="${SLUICE_VENV:-/var/tmp/sluice-venv}"
export SLUICE_VENV

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "error: need root (or sudo) to run: $*" >&2; return 1; fi
}

apt_missing=()
# bindgen needs libclang.so itself (libclang-dev), not only libclang-cpp.
if [ -z "${LIBCLANG_PATH:-}" ] && ! ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1; then
    apt_missing+=(libclang-dev)
fi
if [ "${SLUICE_SETUP_SERVERS:-1}" = 1 ]; then
    if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! ls /usr/share/postgresql/*/extension/pg_stat_statements.control >/dev/null 2>&1; then
        apt_missing+=(postgresql postgresql-contrib)
    fi
    # The TLS test makes its server's certificates with the openssl command.
    command -v openssl >/dev/null || apt_missing+=(openssl)
    # The example apps' scripts (run by the tests) talk HTTP with curl.
    command -v curl >/dev/null || apt_missing+=(curl)
    # The web console's test drives a real headless Chromium.
    command -v chromium >/dev/null || apt_missing+=(chromium)
    # The Kafka listener's tests run Kafka's own command-line client (librdkafka inside).
    command -v kcat >/dev/null || apt_missing+=(kcat)
fi
if [ ${#apt_missing[@]} -gt 0 ]; then
    echo "setup: installing ${apt_missing[*]} with apt-get" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi

# Kafka clients for the Kafka listener's tests, pinned: confluent-kafka (librdkafka 2.16) and
# kafka-python.
kafka_clients=(confluent-kafka==2.16.1 kafka-python==3.0.12)
if [ "${SLUICE_SETUP_SERVERS:-1}" = 1 ] && ! { [ -x "$SLUICE_VENV/bin/moto_server" ] && [ -x "$SLUICE_VENV/bin/noida-db" ] && [ -x "$SLUICE_VENV/bin/openapi-spec-validator" ] && "$SLUICE_VENV/bin/python" -c 'import confluent_kafka, kafka' 2>/dev/null; }; then
    # openapi-core and openapi-spec-validator check the API against its document.
    echo "setup: installing moto[server], osmem-server, noida-db, the OpenAPI validators and Kafka clients into $SLUICE_VENV" >&2
    [ -x "$SLUICE_VENV/bin/pip" ] || python3 -m venv "$SLUICE_VENV"
    "$SLUICE_VENV/bin/pip" install -q 'moto[server]' osmem-server noida-db openapi-core openapi-spec-validator "${kafka_clients[@]}"
fi

# The web console (console/) is built with npm into console/dist/, which the `sluice` binary
# embeds; Vite needs Node.js 20.19 or newer (the machine's own; Debian 12's is too old).
if [ "${SLUICE_SETUP_CONSOLE:-1}" = 1 ]; then
    if ! command -v npm >/dev/null || ! node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)'; then
        echo "error: the web console needs Node.js >= 20.19 with npm (found: $(node --version 2>/dev/null || echo none))" >&2
        exit 1
    fi
    (
        cd "$(dirname "${BASH_SOURCE[0]}")/../console"
        # npm ci only when the lock file changed since the last install.
        if ! cmp -s package-lock.json node_modules/.sluice-lock 2>/dev/null; then
            echo "setup: installing the console's npm packages (npm ci)" >&2
            npm ci --no-audit --no-fund --loglevel=error >&2
            cp package-lock.json node_modules/.sluice-lock
        fi
        echo "setup: building the web console (npm run build)" >&2
        npm run --silent build >&2
    )
fi

if ! command -v cargo >/dev/null; then
    echo "error: cargo is not installed; install Rust (rustup) first" >&2
    exit 1
fi
