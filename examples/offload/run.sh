#!/usr/bin/env bash
# Offloading topics to object storage, both ways, against a local S3 server (moto):
#  1. tiered storage: `driver_pings` keeps 2 MiB on local disk, older segments in s3://lake/tiered,
#     and still reads from offset 0;
#  2. an offload pipeline: `ride_requests` as Parquet in s3://lake/rides, by day and hour;
# then queries the Parquet with SQL (DataFusion, `sluice objects query`).
#
#   examples/offload/run.sh          # SLUICE=path/to/sluice to skip the build; WORK=dir to keep files
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../common.sh"
WORK=${WORK:-$(mktemp -d /tmp/offload-XXXXXX)}
mkdir -p "$WORK/pipelines"
RATE=${RATE:-1}; HOURS=${HOURS:-2}; SEED=${SEED:-7}; START=2026-11-23T06:00:00Z

start_moto
curl -s -XPUT "$S3_ENDPOINT/lake" >/dev/null
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo
export OFFLOAD_BUCKET=lake OFFLOAD_S3_ENDPOINT=$S3_ENDPOINT
S3=(--option "aws_endpoint=$S3_ENDPOINT" --option aws_allow_http=true --option aws_region=us-east-1)

# 1. The log gets its remote storage (remembered in the data directory) and a tiered topic.
#    It keeps every record (retention.ms=-1): the generated pings are timed from $START, and
#    the default 7-day retention would delete them, in S3 too, once that is a week ago.
"$SLUICE" --data-dir "$WORK/data" --remote-storage s3://lake/tiered \
  --remote-storage-option "aws_endpoint=$S3_ENDPOINT" --remote-storage-option aws_allow_http=true \
  --remote-storage-option aws_region=us-east-1 \
  topics create driver_pings --partitions 1 --config remote.storage.enable=true \
  --config segment.bytes=1048576 --config local.retention.bytes=2097152 --config retention.ms=-1 >&2

# 2. The worker with the offload pipeline.
cp "$HERE/pipeline.toml" "$WORK/pipelines/"
start_worker "$WORK/data" "$WORK/pipelines"
log "worker API at $API; generating $HOURS h of rides at $RATE requests/s from $START"
"$SLUICE" --data-dir "$WORK/data" gen rides --rate "$RATE" --start "$START" --duration "${HOURS}h" \
  --speed 0 --seed "$SEED" --no-seed-tables 2>&1 | tail -1 >&2

# The sink closes an object after 10 s without records; wait until every request is in S3.
want=$("$SLUICE" gen rides --rate "$RATE" --start "$START" --duration "${HOURS}h" --speed 0 \
  --seed "$SEED" --no-seed-tables --print 2>/dev/null | grep -c '^ride_requests')
for _ in $(seq 120); do
  got=$("$SLUICE" objects query s3://lake/rides "${S3[@]}" "SELECT COUNT(*) AS n FROM objects" 2>/dev/null | grep -Eo '[0-9]+' | head -1 || true)
  [[ ${got:-0} == "$want" ]] && break
  sleep 1
done
log "all $want ride requests are in s3://lake/rides"

echo "== Parquet objects (first 5):"
"$SLUICE" objects list s3://lake/rides "${S3[@]}" 2>/dev/null | sed -n 1,5p   # sed reads to the end: no broken pipe
echo "== Requests per day, hour and zone (DataFusion over the Parquet objects):"
"$SLUICE" objects query s3://lake/rides "${S3[@]}" \
  "SELECT dt, hour, \"ZONE\" AS zone, COUNT(*) AS requests FROM objects GROUP BY dt, hour, \"ZONE\" ORDER BY dt, hour, requests DESC"
echo "== driver_pings: old segments in s3://lake/tiered, the newest on local disk:"
"$SLUICE" --data-dir "$WORK/data" topics describe driver_pings 2>/dev/null | sed -n '/Tiered/,/^CONFIG/p' | grep -v '^CONFIG'
echo "== driver_pings from offset 0 (read back from S3):"
"$SLUICE" --data-dir "$WORK/data" consume driver_pings --partition 0 --offset 0 --max-messages 3 2>/dev/null
