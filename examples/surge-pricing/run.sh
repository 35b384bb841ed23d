#!/usr/bin/env bash
# Surge pricing live: an Elasticsearch-API server (osmem-server), the worker with this
# folder's pipeline, and `sluice gen rides` feeding it; then the surges it found, read the way
# the app reads them (pull queries over the REST API) and from the dashboard's index.
#
#   examples/surge-pricing/run.sh     # RATE=2 SPEED=10 DURATION=30m; SLUICE=path to skip the build
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../common.sh"
WORK=${WORK:-$(mktemp -d /tmp/surge-XXXXXX)}
RATE=${RATE:-2}; SPEED=${SPEED:-10}; DURATION=${DURATION:-30m}
mkdir -p "$WORK/pipelines"
cp "$HERE/pipeline.toml" "$HERE/es-index-template.json" "$WORK/pipelines/"

ES_PORT=$(free_port)
background "$WORK/osmem.log" "$(ls "$SLUICE_VENV"/lib/python3*/site-packages/osmem_server/bin/osmem-server | head -1)" \
  -addr "127.0.0.1:$ES_PORT" -no-stdin-watch -no-ja
export ES_URL="http://127.0.0.1:$ES_PORT"
wait_http "$ES_URL"
start_worker "$WORK/data" "$WORK/pipelines"
log "worker API at $API, Elasticsearch at $ES_URL; $DURATION of rides at $RATE/s, $SPEED x real time"
"$SLUICE" --data-dir "$WORK/data" gen rides --rate "$RATE" --speed "$SPEED" --duration "$DURATION" >&2
# The queries catch up: wait until no topic grows for 4 s.
total() { curl -s "$API/topics" | python3 -c 'import json,sys; print(sum(t["records"] for t in json.load(sys.stdin)["topics"]))'; }
last=-1; now=$(total)
while [[ $now != "$last" ]]; do last=$now; sleep 4; now=$(total); done
echo "== The app's pull query: downtown's latest windows"
curl -s -XPOST "$API/sql" -d "SELECT zone_window, requests, free_drivers, multiplier FROM surge WHERE zone = 'downtown';" |
  python3 -c 'import json,sys; rows=json.load(sys.stdin)["results"][0]["rows"]; [print(r) for r in sorted(rows, key=lambda r: r["ZONE_WINDOW"])[-5:]]'
echo "== Windows with a surge (multiplier above 1.0):"
curl -s -XPOST "$API/sql" -d "SELECT zone_window, requests, free_drivers, band, multiplier FROM surge WHERE multiplier > 1.0;" |
  python3 -c 'import json,sys; rows=json.load(sys.stdin)["results"][0]["rows"]; [print(r) for r in sorted(rows, key=lambda r: r["ZONE_WINDOW"])[:20]]; print(len(rows), "windows with a surge")'
echo "== The dashboard's index:"
curl -s "$ES_URL/surge/_count"; echo
