#!/usr/bin/env bash
# Installs what Sluice's build and tests need on a fresh Debian machine, skipping what is
# already there: libclang (RocksDB's bindgen), PostgreSQL 15, openssl, and a Python venv with the S3
# (moto) and Elasticsearch-API (osmem-server, noida-db) servers the tests start themselves.
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
fi
if [ ${#apt_missing[@]} -gt 0 ]; then
    echo "setup: installing ${apt_missing[*]} with apt-get" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi

if [ "${SLUICE_SETUP_SERVERS:-1}" = 1 ] && ! { [ -x "$SLUICE_VENV/bin/moto_server" ] && [ -x "$SLUICE_VENV/bin/noida-db" ]; }; then
    echo "setup: installing moto[server], osmem-server and noida-db into $SLUICE_VENV" >&2
    [ -x "$SLUICE_VENV/bin/pip" ] || python3 -m venv "$SLUICE_VENV"
    "$SLUICE_VENV/bin/pip" install -q 'moto[server]' osmem-server noida-db
fi

if ! command -v cargo >/dev/null; then
    echo "error: cargo is not installed; install Rust (rustup) first" >&2
    exit 1
fi
