# Sourced by the examples' run scripts: installs what is missing (scripts/setup.sh: the S3 and
# Elasticsearch-API servers in a venv, PostgreSQL), builds `sluice` unless $SLUICE names one,
# and gives helpers. Servers started through `background` are stopped on exit.
EXAMPLES=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$EXAMPLES")
# shellcheck source=../scripts/setup.sh
source "$REPO/scripts/setup.sh"
if [[ -z ${SLUICE:-} ]]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sluice-target}"
  (cd "$REPO" && cargo build --release --locked -p sluice-runtime)
  SLUICE="$CARGO_TARGET_DIR/release/sluice"
fi
PIDS=()
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# background LOGFILE CMD...: starts CMD, stopped when the script exits.
background() { local out=$1; shift; "$@" >"$out" 2>&1 & PIDS+=($!); }
stop_all() { for p in "${PIDS[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done; return 0; }
trap stop_all EXIT
# wait_http URL: until it answers (60 s at most).
wait_http() { for _ in $(seq 600); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "error: $1 did not answer" >&2; return 1; }
# start_moto: a local S3 server; sets S3_ENDPOINT.
start_moto() {
  local port; port=$(free_port)
  background "$WORK/moto.log" "$SLUICE_VENV/bin/moto_server" -H 127.0.0.1 -p "$port"
  S3_ENDPOINT="http://127.0.0.1:$port"; wait_http "$S3_ENDPOINT"
}
# start_worker DATA PIPELINES: `sluice run`; sets API from the address it leaves in DATA.
start_worker() {
  rm -f "$1/worker.json"
  background "$WORK/worker.log" "$SLUICE" --data-dir "$1" run --pipelines "$2" --listen 127.0.0.1:0
  for _ in $(seq 600); do
    API=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api"])' "$1/worker.json" 2>/dev/null) && return 0
    sleep 0.1
  done
  echo "error: the worker did not start; see $WORK/worker.log" >&2; return 1
}
