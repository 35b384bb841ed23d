#!/usr/bin/env bash
# Runs the scripted hour through `sluice sql` on a fresh data directory and prints the final
# row of every surge key (the format of expected-surge.jsonl), sorted by key:
#
#   SLUICE=/path/to/sluice examples/surge-pricing/run-scripted.sh /tmp/surge-run > got.jsonl
#   diff got.jsonl examples/surge-pricing/expected-surge.jsonl
#
# Order matters only within a topic (one partition each): the tables are loaded first for
# readability, but the result does not depend on it (table-table joins converge).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
sluice="${SLUICE:-sluice}"
dir="${1:?usage: run-scripted.sh NEW_DIR}"
[ ! -e "$dir/data" ] || { echo "error: $dir/data exists; give a fresh folder" >&2; exit 1; }
mkdir -p "$dir"
data="$dir/data"

"$sluice" --data-dir "$data" sql -f "$here/surge.sql" >&2
produce() { # file topic key-field
  jq -rc --arg k "$3" '"\(.[$k])\t\(.)"' "$here/$1" |
    "$sluice" --data-dir "$data" produce "$2" --key-separator $'\t' >&2
}
produce zones.jsonl zones zone
produce rules.jsonl surge_rules band
produce requests.jsonl ride_requests request_id
produce pings.jsonl driver_pings driver_id
# Starting the queries again makes `sql` wait until they have read everything (<= 30 s).
"$sluice" --data-dir "$data" sql -e "SHOW QUERIES;" >/dev/null 2>&1
"$sluice" --data-dir "$data" consume surge --from-beginning --print-key 2>/dev/null |
  python3 -c '
import json, sys
last = {}
for line in sys.stdin:
    key, value = line.rstrip("\n").split("\t", 1)
    last[key] = None if value == "null" else json.loads(value)
for key in sorted(last):
    if last[key] is not None:
        print(json.dumps({"ZONE_WINDOW": key, **last[key]}, separators=(",", ":")))
'
