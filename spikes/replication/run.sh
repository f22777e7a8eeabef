#!/usr/bin/env bash
# The replication-crate spike: the same WAL range read by pg_recvlogical
# (pgoutput), pg_walstream (decoded events) and pgwire-replication (raw
# pgoutput), three runs each, every run from its own slot created at the
# same point before the workload.
#
# usage: spikes/replication/run.sh [STATE_DIR]   (a running local stack with a loaded region)
set -euo pipefail
cd "$(dirname "$0")/../.."
STATE="${1:-.vitrina}"
PORT=$(grep -o '"postgres_port": *[0-9]*' "$STATE/stack.json" | grep -o '[0-9]*$')
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PSQL="$BIN/psql -X -A -t -q -h 127.0.0.1 -p $PORT -U vitrina -d journal"
RUNS=${RUNS:-3}
RATE=${RATE:-3000}
SECONDS_OF_LOAD=${SECONDS_OF_LOAD:-40}

(cd spikes/replication && cargo build --release -q)
SPIKE=spikes/replication/target/release/replication-spike

$PSQL -c "DROP PUBLICATION IF EXISTS spike_pub" -c "CREATE PUBLICATION spike_pub FOR TABLES IN SCHEMA journal"
for r in $(seq 1 "$RUNS"); do
  for k in recv walstream pgwire; do
    $PSQL -c "SELECT pg_drop_replication_slot('spike_${k}_$r') FROM pg_replication_slots WHERE slot_name = 'spike_${k}_$r'" >/dev/null
    $PSQL -c "SELECT pg_create_logical_replication_slot('spike_${k}_$r', 'pgoutput')" >/dev/null
  done
done
START=$($PSQL -c "SELECT pg_current_wal_lsn()")
VITRINA_STATE_DIR="$STATE" target/release/vitrina workload --rate "$RATE" --duration "$SECONDS_OF_LOAD" --mass-enrolment 2000
END=$($PSQL -c "SELECT pg_current_wal_lsn()")
echo "WAL range $START .. $END ($($PSQL -c "SELECT pg_size_pretty(pg_wal_lsn_diff('$END', '$START'))"))"

# wall seconds, then the reader's own CPU seconds (user + system).
TIMEFORMAT="wall=%R cpu=%U+%S"
for r in $(seq 1 "$RUNS"); do
  echo -n "run=$r pg_recvlogical "
  { time "$BIN/pg_recvlogical" -h 127.0.0.1 -p "$PORT" -U vitrina -d journal --slot "spike_recv_$r" --start \
      -E "$END" -o proto_version=1 -o publication_names=spike_pub -f /dev/null ; } 2>&1
  for k in walstream pgwire; do
    echo -n "run=$r "
    { time $SPIKE $k 127.0.0.1 "$PORT" vitrina journal "spike_${k}_$r" spike_pub "$END" ; } 2>&1 | tr '\n' ' '
    echo
  done
done
for r in $(seq 1 "$RUNS"); do
  for k in recv walstream pgwire; do
    $PSQL -c "SELECT pg_drop_replication_slot('spike_${k}_$r')" >/dev/null
  done
done
$PSQL -c "DROP PUBLICATION spike_pub"
