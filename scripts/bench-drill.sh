#!/usr/bin/env bash
# bench-drill.sh — what `cairn drill` costs beyond doing its steps by hand, and how
# fast `cairn backup-verify` reads a backup next to `cairn backup-fetch`.
#
# Usage (as root, on Debian with PostgreSQL 15 server binaries):
#   cargo build --release && scripts/bench-drill.sh [path-to-cairn]   # default: target/release/cairn
#
# One temporary directory holds a throw-away pgbench cluster (scale 100, about
# 1.5 GB, as bench-backup.sh builds it) on a free port of 127.0.0.1, archiving its
# WAL with cairn into a local directory. One backup-push (lz4) is taken, then
# pgbench writes for a while, so that recovery has WAL to replay; the cluster is
# stopped before anything is timed. Then, each run as the postgres user:
#   backup-fetch      the backup into an empty directory (no recovery)
#   backup-verify     the same backup, read and checked, nothing written
#   by hand           backup-fetch --recovery-target latest, pg_ctl start, waiting
#                     until recovery has ended, pg_amcheck --all --heapallindexed,
#                     pg_ctl stop, rm -rf (what a drill does, less its report)
#   by hand + dump    the same with pg_dumpall > /dev/null before the stop (the
#                     drill also reads every row of every table)
#   cairn drill       LATEST --recovery-target latest, its report as JSON
# The by-hand and drill runs alternate, ROUNDS times each; the best of each counts.
#
# BENCH_SCALE=<n>     pgbench scale (default 100: about 1.5 GB)
# BENCH_ROUNDS=<n>    rounds of the by-hand and drill runs (default 2)
# BENCH_PGBENCH_TX=<n> transactions pgbench writes after the backup (default 20000)
set -euo pipefail
export LC_ALL=C
unset "${!PG@}"

readonly PGBIN=/usr/lib/postgresql/15/bin
readonly PARALLEL=2 # CAIRN_BACKUP_CONCURRENCY
readonly ONLY_BASELINES=0
readonly SCALE=${BENCH_SCALE:-100} ROUNDS=${BENCH_ROUNDS:-2} PGBENCH_TX=${BENCH_PGBENCH_TX:-20000}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CAIRN=${1:-$SCRIPT_DIR/../target/release/cairn}

. "$SCRIPT_DIR/lib/bench.sh"
KEEP_STDOUT=1 SYNC_BEFORE_RUN=1 FAILURE_ENV='CAIRN_|PGHOST|PGPORT|PGUSER' FAILURE_PG_LOG=1

for v in SCALE ROUNDS PGBENCH_TX; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "BENCH_$v must be a positive integer, not '${!v}'"
done
((EUID == 0)) || die "run as root (the runs are made as the postgres user)"
id postgres >/dev/null 2>&1 || die "no postgres user"
for t in initdb pgbench pg_ctl pg_amcheck pg_dumpall psql; do
  [[ -x $PGBIN/$t ]] || die "PostgreSQL 15's $t not found in $PGBIN"
done
require_cairn
install_tools jq jq "reads the drill's JSON report"
isolate_env

LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
make_work_dir /tmp/cairn-bench-drill.XXXXXX
cd "$WORK"
PGDATA=$WORK/pgdata SOCK=$WORK/sock WAL_ARCHIVE=$WORK/archive

# ---------------------------------------------------------------------------
# The cluster, its backup and the WAL written after it
# ---------------------------------------------------------------------------
make_pgbench_cluster "$SCALE" "$WAL_ARCHIVE"
cat >"$PGDATA/bench_phase.conf" <<EOF
wal_level = replica
archive_mode = on
archive_command = 'CAIRN_STORAGE=file://$WAL_ARCHIVE CAIRN_COMPRESSION=lz4 CAIRN_LOG_LEVEL=warn $CAIRN wal-push %p'
EOF
pg_start
wait_archiving
RAW_BYTES=$(find "$PGDATA" -path "$PGDATA/pg_wal" -prune -o -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%.0f", s }')

cairn_env "file://$WAL_ARCHIVE" CAIRN_COMPRESSION=lz4 CAIRN_BACKUP_CONCURRENCY=$PARALLEL
export PGHOST=$SOCK PGPORT PGUSER=postgres
log "backup-push (not timed)"
runuser -u postgres -- "$CAIRN" backup-push "$PGDATA" >"$WORK/push.out" 2>"$WORK/push.err" ||
  { cat "$WORK/push.err" >&2; die "backup-push failed"; }
log "pgbench: $PGBENCH_TX transactions after the backup"
runuser -u postgres -- "$PGBIN/pgbench" -n -c 4 -j 2 -t $((PGBENCH_TX / 4)) -h "$SOCK" -p "$PGPORT" postgres \
  >"$WORK/pgbench-run.log" 2>&1 || { tail -n 20 "$WORK/pgbench-run.log" >&2; die "pgbench failed"; }
wait_archiving
pg_stop
unset PGHOST PGPORT PGUSER
STORED=$(du -sb "$WAL_ARCHIVE/basebackups" | cut -f1)
WAL_SEGMENTS=$(find "$WAL_ARCHIVE/wal" -type f -name '[0-9A-F]*' ! -name '*.*' | wc -l)

# "${AS_PG[@]}" <cmd>...: a call made as the postgres user, in the environment
# set above (an array, as /usr/bin/time runs it).
AS_PG=(runuser -u postgres --)

declare -A SECS
# row <id> <what> <seconds> <note>
row() {
  SECS[$1]=$3
  record_row "$1" "$(printf '%-12s | %-46s | %8.2f | %s' "$1" "$2" "$3" "$4")"
}
secs() { awk -v us="$CALL_US" 'BEGIN { printf "%.2f", us / 1e6 }'; }

# ---------------------------------------------------------------------------
# backup-fetch and backup-verify of the same backup
# ---------------------------------------------------------------------------
log "backup-fetch into an empty directory"
d=$WORK/restore
mkdir_pg "$d"
chmod 700 "$d"
start_run fetch
run_call "${AS_PG[@]}" "$CAIRN" backup-fetch "$d" LATEST
row fetch "backup-fetch (to a directory)" "$(secs)" "$(awk -v b="$RAW_BYTES" -v us="$CALL_US" 'BEGIN { printf "%.0f MB/s", b / 1e6 / (us / 1e6) }')"
rm -rf "$d"

log "backup-verify"
start_run verify
run_call "${AS_PG[@]}" "$CAIRN" backup-verify LATEST
row verify "backup-verify (reads, checks, writes nothing)" "$(secs)" "$(awk -v b="$RAW_BYTES" -v us="$CALL_US" 'BEGIN { printf "%.0f MB/s", b / 1e6 / (us / 1e6) }')"

# ---------------------------------------------------------------------------
# The drill by hand and cairn drill, alternating
# ---------------------------------------------------------------------------
SOCK2=$WORK/sock2
mkdir_pg "$SOCK2"
PORT2=$(free_port)

# by_hand <id> <dump: 0|1>: the steps of a drill, each timed; the total is what
# is compared.
by_hand() {
  local id=$1 dump=$2 d=$WORK/by-hand t0 fetch start wait amcheck dumpall stop
  start_run "$id"
  mkdir_pg "$d"
  chmod 700 "$d"
  run_call "${AS_PG[@]}" "$CAIRN" backup-fetch "$d" LATEST --recovery-target latest
  fetch=$CALL_US
  # As the drill starts its server: on a private socket, no TCP, no archiving.
  cat >>"$d/postgresql.auto.conf" <<EOF
port = $PORT2
listen_addresses = ''
unix_socket_directories = '$SOCK2'
archive_mode = off
EOF
  run_call "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$d" -l "$WORK/by-hand.log" -w -t 600 start
  start=$((CALL_US - fetch))
  t0=${EPOCHREALTIME/./}
  until [[ $("${AS_PG[@]}" "$PGBIN/psql" -X -At -h "$SOCK2" -p "$PORT2" -d postgres -c 'select pg_is_in_recovery()' 2>/dev/null) == f ]]; do
    sleep 0.05
  done
  wait=$((${EPOCHREALTIME/./} - t0))
  CALL_US=$((CALL_US + wait))
  run_call "${AS_PG[@]}" "$PGBIN/pg_amcheck" --all --heapallindexed --install-missing -h "$SOCK2" -p "$PORT2"
  amcheck=$((CALL_US - fetch - start - wait))
  dumpall=0
  if ((dump)); then
    run_call "${AS_PG[@]}" bash -c "'$PGBIN/pg_dumpall' -h '$SOCK2' -p $PORT2 >/dev/null"
    dumpall=$((CALL_US - fetch - start - wait - amcheck))
  fi
  run_call "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$d" -m fast -w -t 300 stop
  run_call rm -rf "$d"
  stop=$((CALL_US - fetch - start - wait - amcheck - dumpall))
  local note
  note=$(awk -v f="$fetch" -v s="$start" -v w="$wait" -v a="$amcheck" -v p="$dumpall" -v x="$stop" 'BEGIN {
    printf "fetch %.1f, start %.1f, recovery %.1f, pg_amcheck %.1f, pg_dumpall %.1f, stop+rm %.1f", f/1e6, s/1e6, w/1e6, a/1e6, p/1e6, x/1e6 }')
  row "$id" "by hand$( ((dump)) && echo ' + pg_dumpall')" "$(secs)" "$note"
}

drill() {
  local id=$1
  start_run "$id"
  run_call "${AS_PG[@]}" "$CAIRN" drill LATEST --recovery-target latest --dir "$WORK/drill" --format json
  jq -e '.passed' "$RUN_OUT" >/dev/null || { cat "$RUN_OUT" >&2; die "the drill did not pass"; }
  [[ ! -e $WORK/drill ]] || die "the drill left $WORK/drill behind"
  row "$id" "cairn drill" "$(secs)" "$(jq -r '"fetch \(.fetch_s*10|round/10), replay \(.replay_s*10|round/10), rto \(.rto_s*10|round/10); \(.wal_files_replayed) WAL files; " + ([.checks[] | "\(.name) \(.status)"] | join(", "))' "$RUN_OUT")"
}

for ((r = 1; r <= ROUNDS; r++)); do
  log "round $r of $ROUNDS: by hand"
  by_hand "hand-$r" 0
  log "round $r of $ROUNDS: by hand + pg_dumpall"
  by_hand "dump-$r" 1
  log "round $r of $ROUNDS: cairn drill"
  drill "drill-$r"
done

best() { # best <prefix>: the smallest seconds of the runs <prefix>-1..ROUNDS
  local r m=""
  for ((r = 1; r <= ROUNDS; r++)); do
    if [[ -z $m ]] || awk -v a="${SECS[$1-$r]}" -v b="$m" 'BEGIN { exit !(a < b) }'; then m=${SECS[$1-$r]}; fi
  done
  echo "$m"
}

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
echo
echo "Drill benchmark: PGDATA $((RAW_BYTES / 1000000)) MB (pgbench scale $SCALE), backup stored" \
  "$((STORED / 1000000)) MB (lz4), $WAL_SEGMENTS WAL segments archived, $(nproc) CPUs, $(uname -r)"
echo "load average (1 min) before the benchmark: $LOAD_BEFORE"
echo "PostgreSQL: $("$PGBIN/postgres" --version); cairn: $CAIRN"
echo
printf '%-12s | %-46s | %8s | %s\n' run what seconds detail
printf '%s\n' "-------------+------------------------------------------------+----------+-------"
printf '%s\n' "${ROWS[@]}"
print_noisy_runs
echo
echo "Targets (best of $ROUNDS):"
awk -v d="$(best drill)" -v h="$(best hand)" -v p="$(best dump)" -v v="${SECS[verify]}" -v f="${SECS[fetch]}" 'BEGIN {
  printf "  %-48s %7.2f s / %7.2f s = %5.3f  (target <= 1.10)  %s\n", "cairn drill vs by hand (fetch+start+wait+amcheck)", d, h, d / h, (d / h <= 1.10) ? "MET" : "MISSED"
  printf "  %-48s %7.2f s / %7.2f s = %5.3f  (target <= 1.10)  %s\n", "cairn drill vs by hand + pg_dumpall", d, p, d / p, (d / p <= 1.10) ? "MET" : "MISSED"
  printf "  %-48s %7.2f s / %7.2f s = %5.3f  (target <= 1.00)  %s\n", "backup-verify vs backup-fetch (time)", v, f, v / f, (v / f <= 1.0) ? "MET" : "MISSED"
}'
