#!/usr/bin/env bash
# The bank-alerts scenario, end to end: PostgreSQL -> sluice run (pipeline.toml) ->
# Elasticsearch-API server + webhook receiver, with the worker SIGKILLed and restarted while
# transactions stream in; then every alert is checked against expected-alerts.jsonl.
#
#   examples/bank-alerts/run-scenario.sh
#
# Environment (all optional):
#   SLUICE        the sluice binary (default: sluice on PATH)
#   BANK_PG_URL   an existing PostgreSQL (wal_level=logical, a role with REPLICATION) whose
#                 database is empty; default: a private PostgreSQL 15 started here (needs root,
#                 runs it as the postgres user, as tests/tests/postgres_cdc.rs does)
#   BANK_ES_URL   an existing Elasticsearch/OpenSearch; default: osmem-server from $VENV
#   VENV          the Python venv with osmem-server (default /var/tmp/sluice-venv)
#   KILLS         SIGKILLs of the worker while the bulk phase runs (default 2)
#   KILL_EVERY    seconds from a (re)start of the worker to its SIGKILL (default 2.5)
#   WORK          the folder for data, logs and the webhook log (default: mktemp /tmp/bank-XXXX)
#   HOOK_DELAY    seconds the webhook receiver waits before answering (default 0)
#   KEEP=1        leave the servers running at the end (their PIDs are printed)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
if [[ -z ${SLUICE:-} ]]; then
  # Installs what is missing (PostgreSQL, the venv with osmem-server) and builds sluice.
  REPO=$(cd "$HERE/../.." && pwd)
  source "$REPO/scripts/setup.sh"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sluice-target}"
  (cd "$REPO" && cargo build --release --locked -p sluice-runtime)
  SLUICE="$CARGO_TARGET_DIR/release/sluice"
fi
VENV=${VENV:-/var/tmp/sluice-venv}
KILLS=${KILLS:-2}
WORK=${WORK:-$(mktemp -d /tmp/bank-XXXXXX)}
mkdir -p "$WORK"
PIDS=()
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cleanup() {
  if [[ ${KEEP:-0} == 1 ]]; then
    log "left running: worker ${WORKER:-none}, servers ${PIDS[*]:-}${PGDIR:+, PostgreSQL $(head -1 "$PGDIR/data/postmaster.pid")}"
    log "env: BANK_PG_URL=$BANK_PG_URL BANK_ES_URL=$BANK_ES_URL BANK_WEBHOOK_URL=$BANK_WEBHOOK_URL API=http://127.0.0.1:$APIPORT"
    return
  fi
  [[ -n ${WORKER:-} ]] && kill -TERM "$WORKER" 2>/dev/null && wait "$WORKER" 2>/dev/null || true
  for p in "${PIDS[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done
  if [[ -n ${PGDIR:-} && -f $PGDIR/data/postmaster.pid ]]; then
    kill -INT "$(head -1 "$PGDIR/data/postmaster.pid")" 2>/dev/null || true
  fi
}
trap cleanup EXIT

# The SQL of the pipeline must be alerts.sql, verbatim.
python3 - "$HERE" <<'EOF'
import re, sys
d = sys.argv[1]
toml = open(f"{d}/pipeline.toml").read()
sql = re.search(r'^sql = """\n(.*?)"""', toml, re.S | re.M).group(1)
sys.exit(0 if sql == open(f"{d}/alerts.sql").read() else "pipeline.toml's sql differs from alerts.sql")
EOF

# --- PostgreSQL ----------------------------------------------------------------------------
if [[ -z ${BANK_PG_URL:-} ]]; then
  PGPORT=$(free_port); PGDIR=$WORK/pg; B=/usr/lib/postgresql/15/bin
  mkdir -p "$PGDIR"; chown postgres: "$PGDIR"
  runuser -u postgres -- $B/initdb -D "$PGDIR/data" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
  printf "listen_addresses='127.0.0.1'\nport=$PGPORT\nunix_socket_directories='$PGDIR'\nwal_level=logical\nmax_replication_slots=10\nmax_wal_senders=10\nfsync=off\n" >> "$PGDIR/data/postgresql.conf"
  echo "host replication all 127.0.0.1/32 trust" >> "$PGDIR/data/pg_hba.conf"
  runuser -u postgres -- $B/pg_ctl -D "$PGDIR/data" -l "$PGDIR/pg.log" -w start >/dev/null
  psql -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -c 'CREATE DATABASE bank'
  export BANK_PG_URL="postgres://postgres@127.0.0.1:$PGPORT/bank"
  log "PostgreSQL 15 on 127.0.0.1:$PGPORT (pid $(head -1 "$PGDIR/data/postmaster.pid"))"
fi
PSQL=(psql -X -q -v ON_ERROR_STOP=1 "$BANK_PG_URL")

# --- Elasticsearch API and the webhook receiver ---------------------------------------------
if [[ -z ${BANK_ES_URL:-} ]]; then
  ESPORT=$(free_port)
  OSMEM=$(ls "$VENV"/lib/python3*/site-packages/osmem_server/bin/osmem-server | head -1)
  "$OSMEM" -addr "127.0.0.1:$ESPORT" -no-stdin-watch -no-ja >"$WORK/osmem.log" 2>&1 &
  PIDS+=($!)
  export BANK_ES_URL="http://127.0.0.1:$ESPORT"
  log "osmem-server on $BANK_ES_URL (pid $!)"
fi
HOOKPORT=$(free_port)
python3 "$HERE/webhook_receiver.py" "$HOOKPORT" "$WORK/hook.jsonl" "${HOOK_DELAY:-0}" >"$WORK/hook.log" 2>&1 &
PIDS+=($!)
export BANK_WEBHOOK_URL="http://127.0.0.1:$HOOKPORT/alerts"
log "webhook receiver on $BANK_WEBHOOK_URL (pid $!), writing $WORK/hook.jsonl"
for _ in $(seq 50); do curl -sf "$BANK_ES_URL/" >/dev/null && break; sleep 0.1; done

# --- The worker ----------------------------------------------------------------------------
mkdir -p "$WORK/pipelines"; cp "$HERE/pipeline.toml" "$HERE/alerts-template.json" "$WORK/pipelines/"
APIPORT=$(free_port)
RUNS=0
start_worker() {
  RUNS=$((RUNS + 1))
  "$SLUICE" --data-dir "$WORK/data" run --pipelines "$WORK/pipelines" --listen "127.0.0.1:$APIPORT" \
    >"$WORK/worker-$RUNS.log" 2>&1 &
  WORKER=$!
  log "worker run $RUNS: pid $WORKER, API http://127.0.0.1:$APIPORT, log $WORK/worker-$RUNS.log"
}
es_count() { curl -s "$BANK_ES_URL/alerts/_count" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("count", 0))' 2>/dev/null || echo 0; }
wait_alerts() {  # wait until Elasticsearch holds $1 alerts and the webhook got as many alert ids
  local n=$1 deadline=$((SECONDS + ${2:-120}))
  while (( SECONDS < deadline )); do
    local es hook
    es=$(es_count)
    hook=$(python3 -c 'import json,sys; print(len({json.loads(l)["body"]["alert_id"] for l in open(sys.argv[1])}))' "$WORK/hook.jsonl" 2>/dev/null || echo 0)
    if (( es >= n && hook >= n )); then log "alerts: $es in Elasticsearch, $hook in the webhook"; return 0; fi
    sleep 0.5
  done
  log "timed out waiting for $n alerts: $(es_count) in Elasticsearch"; return 1
}

# --- The scenario --------------------------------------------------------------------------
"${PSQL[@]}" -f "$HERE/schema.sql"
python3 "$HERE/scenario.py" sql seed | "${PSQL[@]}"          # before the worker: read by the snapshot
log "seeded: 9 customers, 2 transactions"
start_worker
wait_alerts 1 60                                             # tx-2
python3 "$HERE/scenario.py" sql live 0.01 | "${PSQL[@]}" >/dev/null   # transactions 10 ms apart: NOTES, bug 4
python3 "$HERE/scenario.py" sql change 0.01 | "${PSQL[@]}" >/dev/null # Ada lowers, Bruno raises his threshold
python3 "$HERE/scenario.py" sql burst | "${PSQL[@]}"         # three rows in one transaction
wait_alerts 6 60                                             # tx-2 tx-4 tx-7 tx-9 tx-10 sum-2-...
log "bulk: 360 transactions, one every ~20 ms; $KILLS SIGKILL(s) of the worker meanwhile"
python3 "$HERE/scenario.py" sql bulk 0.02 | "${PSQL[@]}" >/dev/null &
BULK=$!
for k in $(seq "$KILLS"); do
  sleep "${KILL_EVERY:-2.5}"
  log "SIGKILL worker pid $WORKER"
  kill -KILL "$WORKER"; wait "$WORKER" 2>/dev/null || true
  sleep 1
  start_worker
done
wait "$BULK"
python3 "$HERE/scenario.py" sql tick | "${PSQL[@]}"
log "all rows written; waiting for the alerts"
python3 "$HERE/scenario.py" expected > "$WORK/expected-alerts.jsonl"
cmp -s "$WORK/expected-alerts.jsonl" "$HERE/expected-alerts.jsonl" || log "note: expected-alerts.jsonl is not what scenario.py computes now"
wait_alerts "$(wc -l < "$WORK/expected-alerts.jsonl")" 180 || true
sleep 5                                                      # let repeats, if any, arrive
curl -s -XPOST "http://127.0.0.1:$APIPORT/sql" -d 'SHOW QUERIES;' > "$WORK/queries.json" || true
"$SLUICE" --data-dir "$WORK/data" topics list > "$WORK/topics.txt" 2>/dev/null || true
log "topics: $(tr '\n' ' ' < "$WORK/topics.txt" | tr -s ' ')"
for t in alerts window_alerts window_totals; do   # log start must stay 0: nothing deleted by retention
  "$SLUICE" --data-dir "$WORK/data" topics describe "$t" 2>/dev/null | sed -n 4p | awk -v t="$t" '{print "  " t ": log start " $2 ", log end " $3}'
done
curl -s "http://127.0.0.1:$APIPORT/health"; echo
curl -s "$BANK_ES_URL/alerts/_mapping" > "$WORK/mapping.json" || true
python3 "$HERE/scenario.py" check "$BANK_ES_URL" "$WORK/hook.jsonl" "$HERE/expected-alerts.jsonl"
