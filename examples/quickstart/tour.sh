#!/usr/bin/env bash
# A tour of the command line on ./data: creates a topic, produces keyed records, consumes
# them as a consumer group, shows the group's lag, then runs SQL over them (a stream, a
# persistent per-zone table, push and pull queries). Re-running it adds more records.
set -euo pipefail
cd "$(dirname "$0")/../.."
SLUICE_SETUP_SERVERS=0 source scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sluice-target}"
cargo build --release --locked -p sluice-runtime
sluice="$CARGO_TARGET_DIR/release/sluice"
data="${SLUICE_DATA_DIR:-./data}"
set -x
"$sluice" --data-dir "$data" topics create rides --partitions 3 --if-not-exists
"$sluice" --data-dir "$data" produce rides --key-separator : --file examples/quickstart/rides.txt
"$sluice" --data-dir "$data" topics describe rides
"$sluice" --data-dir "$data" consume rides --group quickstart --from-beginning --print-key --print-partition --print-offset --max-messages 12
"$sluice" --data-dir "$data" groups describe quickstart
"$sluice" --data-dir "$data" sql -f examples/quickstart/rides.sql
"$sluice" --data-dir "$data" sql -e "SELECT zone, rides, avg_fare, top_fare FROM zone_fares;"
