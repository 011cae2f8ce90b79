#!/usr/bin/env bash
# bench-receive.sh — cairn wal-receive next to pg_receivewal, in one run on one
# throw-away cluster: how fast each catches up on WAL the server holds for its
# slot, and what each costs pgbench's commit latency as the synchronous
# standby (and asynchronous, for the floor); the catch-up into S3 (s3s-fs on
# 127.0.0.1); cairn's peak RSS.
#
# Usage (as root, on Debian with PostgreSQL 15 server binaries):
#   cargo build --release && scripts/bench-receive.sh [path-to-cairn]
#
# BENCH_WAL_MB=<n>     WAL to catch up on (default 1024)
# BENCH_SECONDS=<n>    seconds of each pgbench latency run (default 20)
set -euo pipefail
export LC_ALL=C
unset "${!PG@}"

readonly PGBIN=/usr/lib/postgresql/15/bin
readonly ONLY_BASELINES=0
readonly S3_BUCKET=bench S3_ACCESS_KEY=bench S3_SECRET_KEY=benchsecret
readonly WAL_MB=${BENCH_WAL_MB:-1024} SECONDS_RUN=${BENCH_SECONDS:-20}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CAIRN=${1:-$SCRIPT_DIR/../target/release/cairn}
. "$SCRIPT_DIR/lib/bench.sh"

((EUID == 0)) || die "run as root"
for t in initdb pgbench pg_ctl pg_receivewal psql; do
  [[ -x $PGBIN/$t ]] || die "PostgreSQL 15's $t not found in $PGBIN"
done
require_cairn
install_tools
isolate_env

make_work_dir /tmp/cairn-bench-receive.XXXXXX
cd "$WORK"
PGDATA=$WORK/pgdata SOCK=$WORK/sock
init_cluster
cat >>"$PGDATA/postgresql.conf" <<EOF
wal_level = replica
max_wal_senders = 10
max_wal_size = 4GB
checkpoint_timeout = 1h
EOF
pg_start
export PGHOST=$SOCK PGPORT PGUSER=postgres
runuser -u postgres -- "$PGBIN/pgbench" -i -q -s 20 -h "$SOCK" -p "$PGPORT" postgres >"$WORK/pgbench-init.log" 2>&1
psql_ -c "select pg_create_physical_replication_slot('cairn', true)" >/dev/null
psql_ -c "select pg_create_physical_replication_slot('pgrw', true)" >/dev/null
psql_ -c "select pg_create_physical_replication_slot('cairn_s3', true)" >/dev/null

# --- Catch-up throughput: WAL_MB of WAL held by both slots, then each client
# reads it from the start.
start_lsn=$(psql_ -c "select restart_lsn from pg_replication_slots where slot_name = 'cairn'")
log "writing $WAL_MB MB of WAL for the slots to hold"
psql_ -c "create table filler (b bytea)"
psql_ -c "insert into filler select decode(repeat(md5(g::text), 32), 'hex') from generate_series(1, $((WAL_MB * 1024 * 1024 / 600))) g" >/dev/null
psql_ -c "select pg_switch_wal()" >/dev/null
target=$(psql_ -c "select pg_current_wal_lsn()")
bytes=$(psql_ -c "select pg_wal_lsn_diff('$target', '$start_lsn')::bigint")
log "$((bytes / 1000000)) MB of WAL from $start_lsn to $target"
slot_at() { psql_ -c "select pg_wal_lsn_diff(restart_lsn, '$target') >= 0 from pg_replication_slots where slot_name = '$1'"; }

mkdir_pg "$WORK/pgrw" "$WORK/spool" "$WORK/spool-s3" "$WORK/archive"
log "pg_receivewal: catch-up"
t0=${EPOCHREALTIME/./}
runuser -u postgres -- /usr/bin/time -f %M -o "$WORK/rss.pgrw" "$PGBIN/pg_receivewal" -D "$WORK/pgrw" --slot pgrw \
  --synchronous --no-loop -E "$target" -h "$SOCK" -p "$PGPORT" -U postgres -n 2>"$WORK/pgrw.log" || true
PGRW_S=$(awk -v us="$((${EPOCHREALTIME/./} - t0))" 'BEGIN { printf "%.2f", us / 1e6 }')

log "cairn wal-receive: catch-up (lz4, local directory)"
export CAIRN_STORAGE=file://$WORK/archive CAIRN_COMPRESSION=lz4 CAIRN_LOG_LEVEL=warn
t0=${EPOCHREALTIME/./}
runuser -u postgres -- /usr/bin/time -f %M -o "$WORK/rss.cairn" "$CAIRN" wal-receive --slot cairn \
  --spool "$WORK/spool" 2>"$WORK/cairn.log" &
RECEIVER=$!
until [[ $(slot_at cairn) == t ]]; do sleep 0.05; done
CAIRN_FLUSH_S=$(awk -v us="$((${EPOCHREALTIME/./} - t0))" 'BEGIN { printf "%.2f", us / 1e6 }')
segments=$((bytes / 16777216))
until (($(find "$WORK/archive/wal" -name '0000*' ! -name '*.*' | wc -l) >= segments)); do sleep 0.05; done
CAIRN_STORED_S=$(awk -v us="$((${EPOCHREALTIME/./} - t0))" 'BEGIN { printf "%.2f", us / 1e6 }')

log "cairn wal-receive: catch-up (lz4, S3)"
s3_start
s3_objects() { find "$S3_ROOT/$S3_BUCKET/wal" -name '0000*' ! -name '*.*' 2>/dev/null | wc -l; }
(
  cairn_env "s3://$S3_BUCKET" CAIRN_COMPRESSION=lz4
  t0=${EPOCHREALTIME/./}
  runuser -u postgres -- /usr/bin/time -f %M -o "$WORK/rss.cairn-s3" "$CAIRN" wal-receive --slot cairn_s3 \
    --spool "$WORK/spool-s3" 2>"$WORK/cairn-s3.log" &
  until (($(s3_objects) >= segments)); do sleep 0.05; done
  awk -v us="$((${EPOCHREALTIME/./} - t0))" 'BEGIN { printf "%.2f", us / 1e6 }' >"$WORK/s3.seconds"
  pkill -TERM -f "^$CAIRN wal-receive --slot cairn_s3" || true
  wait
)
CAIRN_S3_S=$(cat "$WORK/s3.seconds")
s3_stop
psql_ -c "select pg_drop_replication_slot('cairn_s3')" >/dev/null

# --- Commit latency: pgbench -c 8 with each as the synchronous standby, and
# with none. The cairn receiver keeps running (it follows the server).
latency() { # latency <synchronous_standby_names>
  psql_ -c "alter system set synchronous_standby_names = '$1'" >/dev/null
  psql_ -c "select pg_reload_conf()" >/dev/null
  sleep 2
  runuser -u postgres -- "$PGBIN/pgbench" -n -c 8 -j 2 -T "$SECONDS_RUN" -h "$SOCK" -p "$PGPORT" postgres 2>&1 |
    awk '/latency average/ { print $4 } /^tps/ { tps = $3 } END { }'
}
# Both receivers stream throughout (so both cost the same CPU in every
# run); only which one is synchronous changes, in the order cairn, pgrw,
# none, none, pgrw, cairn, so that no setting always runs first.
runuser -u postgres -- "$PGBIN/pg_receivewal" -D "$WORK/pgrw" --slot pgrw --synchronous -n \
  -d "host=$SOCK port=$PGPORT user=postgres application_name=pgrw" 2>>"$WORK/pgrw.log" &
PGRW=$!
declare -A LAT
for who in cairn pgrw none none pgrw cairn; do
  log "commit latency: synchronous standby: $who"
  name=$who
  [[ $who == none ]] && name=''
  LAT[$who]="${LAT[$who]:-} $(latency "$name")"
done
avg() { echo "$1" | awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.3f", s / NF }'; }
LAT_CAIRN=$(avg "${LAT[cairn]}") LAT_PGRW=$(avg "${LAT[pgrw]}") LAT_ASYNC=$(avg "${LAT[none]}")
# SIGTERM to cairn itself (not to runuser or time, which would not pass it on
# before time writes the peak RSS).
pkill -TERM -f "^$CAIRN wal-receive --slot cairn" || true
wait "$RECEIVER" || true
CAIRN_RSS=$(awk '{ printf "%.1f", $1 / 1024 }' "$WORK/rss.cairn")
kill -TERM "$PGRW"
wait "$PGRW" || true

echo
echo "WAL receiver benchmark: $((bytes / 1000000)) MB of WAL to catch up on, $(nproc) CPUs, $(uname -r)"
echo "PostgreSQL: $("$PGBIN/postgres" --version); cairn: $CAIRN"
echo
awk -v b="$bytes" -v p="$PGRW_S" -v f="$CAIRN_FLUSH_S" -v s="$CAIRN_STORED_S" -v s3="$CAIRN_S3_S" 'BEGIN {
  printf "catch-up  pg_receivewal --synchronous (local dir)       %7.2f s  %7.1f MB/s\n", p, b / 1e6 / p
  printf "catch-up  cairn wal-receive, flushed in its spool        %7.2f s  %7.1f MB/s\n", f, b / 1e6 / f
  printf "catch-up  cairn wal-receive, stored (lz4, local dir)     %7.2f s  %7.1f MB/s\n", s, b / 1e6 / s
  printf "catch-up  cairn wal-receive, stored (lz4, S3 s3s-fs)     %7.2f s  %7.1f MB/s\n", s3, b / 1e6 / s3
  printf "  cairn stored / pg_receivewal throughput = %.2f (target >= 1.0)  %s\n", p / s, (p / s >= 1.0) ? "MET" : "MISSED"
}'
awk -v c="$LAT_CAIRN" -v p="$LAT_PGRW" -v a="$LAT_ASYNC" 'BEGIN {
  printf "commit latency, pgbench -c 8 (mean of 2 runs each): cairn sync %s ms, pg_receivewal sync %s ms, async %s ms\n", c, p, a
  printf "  cairn / pg_receivewal = %.2f (target <= 1.2)  %s\n", c / p, (c / p <= 1.2) ? "MET" : "MISSED"
}'
echo "cairn wal-receive peak RSS over the run: $CAIRN_RSS MiB (target <= 128); into S3: $(awk '{ printf "%.1f", $1 / 1024 }' "$WORK/rss.cairn-s3") MiB"
echo "pg_receivewal peak RSS (catch-up): $(awk '{ printf "%.1f", $1 / 1024 }' "$WORK/rss.pgrw") MiB"
