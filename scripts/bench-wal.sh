#!/usr/bin/env bash
# bench-wal.sh — how fast cairn archives and restores WAL, next to `cp` and pgBackRest.
#
# Usage (as root, on Debian with PostgreSQL 15 server binaries):
#   cargo build --release && scripts/bench-wal.sh [path-to-cairn]   # default: target/release/cairn
#
# Everything happens in one temporary directory with a throw-away cluster on a free
# port of 127.0.0.1; the machine's own clusters are never touched. All runs use the
# same 64 real 16 MiB segments in the same invocation, so the figures are comparable.
# See docs/BENCHMARKS.md for what each figure means.
#
# BENCH_ONLY_BASELINES=1 runs only the corpus, `cp` and pgBackRest parts (no cairn).
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and awk must use '.' as the decimal point

readonly NSEG=64
readonly SEG_BYTES=$((16 * 1024 * 1024))
readonly PGBIN=/usr/lib/postgresql/15/bin
readonly S3_BUCKET=bench
readonly S3_ACCESS_KEY=bench S3_SECRET_KEY=benchsecret
readonly ONLY_BASELINES=${BENCH_ONLY_BASELINES:-0}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CAIRN=${1:-$SCRIPT_DIR/../target/release/cairn}

. "$SCRIPT_DIR/lib/bench.sh"

# ---------------------------------------------------------------------------
# Preconditions and tools
# ---------------------------------------------------------------------------
((EUID == 0)) || die "run as root (PostgreSQL-side commands are run as the postgres user)"
id postgres >/dev/null 2>&1 || die "no postgres user"
[[ -x $PGBIN/initdb ]] || die "PostgreSQL 15 server binaries not found in $PGBIN"
if [[ $ONLY_BASELINES != 1 ]]; then
  [[ -x $CAIRN ]] || die "cairn binary $CAIRN not found; build it with 'cargo build --release'"
  CAIRN=$(realpath -e "$CAIRN") # the calls run from fake data directories
fi

install_tools
isolate_env

# ---------------------------------------------------------------------------
# Work directory
# ---------------------------------------------------------------------------
make_work_dir /tmp/cairn-bench.XXXXXX
PGDATA=$WORK/pgdata SOCK=$WORK/sock CORPUS=$WORK/corpus

# wait_for_workers: prefetch workers outlive wal-fetch; let them finish so the next
# run does not compete with them for the CPU.
wait_for_workers() {
  local i
  for ((i = 0; i < 600; i++)); do
    [[ -z $(our_cairn_pids) ]] && return 0
    sleep 0.1
  done
  die "cairn prefetch workers still running after 60 s: $(our_cairn_pids | tr '\n' ' ')"
}

# ---------------------------------------------------------------------------
# Results. Every call is run like PostgreSQL runs it — one process, one segment —
# and timed by run_call; bookkeeping such as renaming .ready files is not timed.
# ---------------------------------------------------------------------------
# stored_bytes / stored_count <dir>: total size and number of the WAL objects
# (24-hex-digit names) under dir. WAL objects under a storage directory, under `azure:<prefix>` in the
# Azurite container, or under `moto:<prefix>` in the moto
# bucket (which keeps its objects in memory: listed over its API, unsigned, as
# moto allows), one "<size> <name>" line each.
wal_objects() {
  if [[ $1 == azure:* ]]; then
    # Azurite keeps blobs in a format of its own: listed over its API.
    azurite_request GET "$AZ_CONTAINER" "restype=container&comp=list&prefix=${1#azure:}" |
      python3 -c 'import sys, xml.etree.ElementTree as E
for b in E.parse(sys.stdin).getroot().iter("Blob"):
    print(b.findtext("Properties/Content-Length"), b.findtext("Name"))' |
      grep -E ' .*/[0-9A-F]{24}([.-].*)?$'
  elif [[ $1 == moto:* ]]; then
    curl -sf "http://127.0.0.1:$MOTO_PORT/$MOTO_BUCKET?list-type=2&max-keys=1000&prefix=${1#moto:}" |
      grep -o '<Key>[^<]*</Key><[^>]*>[^<]*</[^>]*><[^>]*>[^<]*</[^>]*><Size>[0-9]*</Size>' |
      sed -E 's|<Key>([^<]*)</Key>.*<Size>([0-9]*)</Size>|\2 \1|' |
      grep -E ' .*/[0-9A-F]{24}([.-].*)?$'
  else
    find "$1" -type f -regextype posix-extended -regex '.*/[0-9A-F]{24}([.-].*)?' -printf '%s %p\n'
  fi
}
stored_bytes() { wal_objects "$1" | awk '{ s += $1 } END { printf "%d", s }'; }
stored_count() { wal_objects "$1" | wc -l; }

declare -A SECS_PER_SEG TOTAL_SECS
# add_row <id> <backend> <variant> <stored bytes or "-"> : records the current run.
add_row() {
  local id=$1 backend=$2 variant=$3 stored=$4 raw=$((NSEG * SEG_BYTES)) row
  row=$(awk -v us="$CALL_US" -v n="$NSEG" -v raw="$raw" -v st="$stored" -v rss="$(peak_rss_mib)" \
    -v b="$backend" -v v="$variant" 'BEGIN {
      s = us / 1e6
      ratio = (st == "-") ? "-" : sprintf("%.3f", st / raw)
      printf "%-10s | %-30s | %5d | %8.2f | %9.4f | %8.1f | %6s | %12s\n", b, v, n, s, s / n, raw / 1e6 / s, ratio, rss
    }')
  TOTAL_SECS[$id]=$(awk -v us="$CALL_US" 'BEGIN { printf "%.6f", us / 1e6 }')
  SECS_PER_SEG[$id]=$(awk -v us="$CALL_US" -v n="$NSEG" 'BEGIN { printf "%.6f", us / 1e6 / n }')
  record_row "$id" "$row"
}

# ---------------------------------------------------------------------------
# 1. Corpus: 64 real, not trivially compressible segments from a throw-away cluster
# ---------------------------------------------------------------------------
init_cluster "$CORPUS"
# archive_command copies each completed segment into the corpus directory. fsync=off
# and a large max_wal_size only make the corpus faster to produce.
cat >>"$PGDATA/postgresql.conf" <<EOF
archive_mode = on
archive_command = 'test ! -f $CORPUS/%f && cp %p $CORPUS/%f'
max_wal_size = 4GB
checkpoint_timeout = 1h
fsync = off
synchronous_commit = off
EOF
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -l "$WORK/postgres.log" -w -t 60 start >/dev/null ||
  { cat "$WORK/postgres.log" >&2; die "cannot start PostgreSQL"; }
PG_RUNNING=1

# md5 text is hex: each byte carries 4 bits of entropy, so segments compress about
# 2:1 at best, like real table data and unlike zero-filled segments.
log "generating WAL for $NSEG+ segments"
psql_ -c "create table bench_wal (id bigint, t text)"
start_lsn=$(psql_ -c "select pg_current_wal_lsn()")
need=$(((NSEG + 3) * SEG_BYTES))
while (($(psql_ -c "select pg_wal_lsn_diff(pg_current_wal_lsn(), '$start_lsn')::bigint") < need)); do
  psql_ -c "insert into bench_wal select i, md5(random()::text) || md5(random()::text) || md5(random()::text)
            from generate_series(1, 200000) i"
done
# Switch only after filling, so no corpus segment is a mostly-zero switched one.
last=$(psql_ -c "select pg_walfile_name(pg_switch_wal())")
for ((i = 0; ; i++)); do
  archived=$(psql_ -c "select coalesce(last_archived_wal, '') from pg_stat_archiver")
  [[ $archived > $last || $archived == "$last" ]] && break
  ((i < 1200)) || die "archiver did not reach $last (at '$archived'); see $WORK/postgres.log"
  sleep 0.1
done
# Drop the first segment (initdb's) and the last (the switched, zero-padded one);
# keep the next 64 consecutive ones.
mapfile -t all < <(find "$CORPUS" -maxdepth 1 -type f -regextype posix-extended -regex '.*/[0-9A-F]{24}' -printf '%f\n' | sort)
((${#all[@]} >= NSEG + 2)) || die "only ${#all[@]} segments archived"
SEGS=("${all[@]:1:NSEG}")
for f in "${all[@]}"; do
  [[ " ${SEGS[*]} " == *" $f "* ]] || rm -f "$CORPUS/$f"
done
for f in "${SEGS[@]}"; do
  [[ $(stat -c %s "$CORPUS/$f") == "$SEG_BYTES" ]] || die "$f is not $SEG_BYTES bytes"
done
log "corpus: ${SEGS[0]} .. ${SEGS[NSEG - 1]} (${#SEGS[@]} segments)"

# pgBackRest's stanza-create needs the cluster running; do it now, then stop it.
if ((HAVE_PGBR)); then
  pgbr_setup compress-type=lz4
  "${PGBR_CMD[@]}" stanza-create >"$WORK/pgbr-stanza.log" 2>&1 || { cat "$WORK/pgbr-stanza.log" >&2; die "pgbackrest stanza-create failed"; }
  # The burst needs an empty repository too: copy the freshly created one.
  cp -a "$PGBR/repo" "$PGBR/repo-burst"
fi

runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
PG_RUNNING=0
cat "${SEGS[@]/#/$CORPUS/}" >/dev/null # every run reads the corpus from the page cache

# ---------------------------------------------------------------------------
# 2. Floor: cp, one process per segment
# ---------------------------------------------------------------------------
log "cp floor"
mkdir -p "$WORK/cp"
start_run cp
for s in "${SEGS[@]}"; do run_call cp "$CORPUS/$s" "$WORK/cp/$s"; done
add_row cp local "cp (floor)" "$(stored_bytes "$WORK/cp")"
rm -rf "$WORK/cp"

# ---------------------------------------------------------------------------
# cairn runs
# ---------------------------------------------------------------------------
# fake_datadir <dir> [ready]: a data directory whose pg_wal holds (hard links to) all
# corpus segments; with "ready", each also has archive_status/<name>.ready.
fake_datadir() {
  local s
  mkdir -p "$1/pg_wal/archive_status"
  for s in "${SEGS[@]}"; do
    ln "$CORPUS/$s" "$1/pg_wal/$s"
    [[ ${2:-} != ready ]] || : >"$1/pg_wal/archive_status/$s.ready"
  done
}

# check_archive <dir>: all 64 segments must have been stored.
check_archive() {
  local n
  n=$(stored_count "$1")
  ((n == NSEG)) || die "expected $NSEG WAL objects under $1, found $n"
}

# push_each <id> <backend> <variant> <storage-url> <storage-dir> [VAR=value]...
# One wal-push per segment, archive_status empty so no lookahead can happen.
push_each() {
  local id=$1 backend=$2 variant=$3 url=$4 dir=$5 s
  shift 5
  log "$backend: wal-push per segment, $variant"
  cairn_env "$url" "$@"
  fake_datadir "$WORK/$id"
  cd "$WORK/$id"
  start_run "$id"
  for s in "${SEGS[@]}"; do run_call "$CAIRN" wal-push "pg_wal/$s"; done
  cd "$WORK"
  check_archive "$dir"
  add_row "$id" "$backend" "wal-push $variant" "$(stored_bytes "$dir")"
  rm -rf "${WORK:?}/$id"
}

# burst <id> <backend> <lookahead> <storage-url> <storage-dir>
# 64 segments ready at once; the archiver loop calls wal-push for each in order and
# renames .ready to .done after each success, as PostgreSQL does.
burst() {
  local id=$1 backend=$2 la=$3 url=$4 dir=$5 s st=$WORK/$1/pg_wal/archive_status
  log "$backend: burst of $NSEG, lookahead $la"
  cairn_env "$url" CAIRN_COMPRESSION=lz4 CAIRN_WAL_PUSH_LOOKAHEAD="$la"
  fake_datadir "$WORK/$id" ready
  cd "$WORK/$id"
  start_run "$id"
  for s in "${SEGS[@]}"; do
    run_call "$CAIRN" wal-push "pg_wal/$s"
    mv "$st/$s.ready" "$st/$s.done"
  done
  cd "$WORK"
  check_archive "$dir"
  add_row "$id" "$backend" "burst lz4, lookahead $la" "$(stored_bytes "$dir")"
  rm -rf "${WORK:?}/$id"
}

# verify_restored <dir>: the restored files must equal the originals byte for byte.
verify_restored() {
  local s
  for s in "${SEGS[@]}"; do
    cmp -s "$CORPUS/$s" "$1/$s" || die "restored $s in $1 differs from the original"
  done
}

# fetch_each <id> <backend> <prefetch> <storage-url>
# restore_command as PostgreSQL runs it during recovery: one wal-fetch per segment
# into pg_wal/RECOVERYXLOG, which PostgreSQL then renames (here: moves aside).
fetch_each() {
  local id=$1 backend=$2 pf=$3 url=$4 s d=$WORK/$1
  log "$backend: wal-fetch per segment, prefetch $pf"
  cairn_env "$url" CAIRN_WAL_FETCH_PREFETCH="$pf"
  mkdir -p "$d/pg_wal" "$d/restored"
  : >"$d/recovery.signal"
  cd "$d"
  start_run "$id"
  for s in "${SEGS[@]}"; do
    run_call "$CAIRN" wal-fetch "$s" pg_wal/RECOVERYXLOG
    mv pg_wal/RECOVERYXLOG "restored/$s"
  done
  cd "$WORK"
  wait_for_workers
  verify_restored "$d/restored"
  add_row "$id" "$backend" "wal-fetch, prefetch $pf" -
  rm -rf "$d"
}

# check_age_archive <storage-url>: spot check that an encrypted archive decrypts.
check_age_archive() {
  local d=$WORK/agecheck s=${SEGS[0]}
  cairn_env "$1" CAIRN_AGE_IDENTITY_FILE="$AGE_KEY" CAIRN_WAL_FETCH_PREFETCH=0
  mkdir -p "$d/pg_wal"
  cd "$d"
  start_run agecheck
  run_call "$CAIRN" wal-fetch "$s" pg_wal/RECOVERYXLOG
  cd "$WORK"
  cmp -s "$CORPUS/$s" "$d/pg_wal/RECOVERYXLOG" || die "segment restored from $1 differs from the original"
  rm -rf "$d"
}

if [[ $ONLY_BASELINES != 1 ]]; then
  make_age_key
  L=$WORK/store-local

  # -------------------------------------------------------------------------
  # 3–5 on the local directory backend
  # -------------------------------------------------------------------------
  push_each l-lz4 local "lz4" "file://$L/lz4" "$L/lz4" CAIRN_COMPRESSION=lz4
  push_each l-zstd local "zstd" "file://$L/zstd" "$L/zstd" CAIRN_COMPRESSION=zstd
  push_each l-lz4age local "lz4+age" "file://$L/lz4age" "$L/lz4age" \
    CAIRN_COMPRESSION=lz4 CAIRN_AGE_RECIPIENTS="$AGE_RECIPIENT"
  push_each l-zstdage local "zstd+age" "file://$L/zstdage" "$L/zstdage" \
    CAIRN_COMPRESSION=zstd CAIRN_AGE_RECIPIENTS="$AGE_RECIPIENT"
  check_age_archive "file://$L/lz4age"
  check_age_archive "file://$L/zstdage"
  rm -rf "$L/zstd" "$L/lz4age" "$L/zstdage"
  burst l-burst8 local 8 "file://$L/burst8" "$L/burst8"
  burst l-burst0 local 0 "file://$L/burst0" "$L/burst0"
  rm -rf "$L/burst8" "$L/burst0"
  fetch_each l-fetch0 local 0 "file://$L/lz4"
  fetch_each l-fetch8 local 8 "file://$L/lz4"
  rm -rf "$L"

  # -------------------------------------------------------------------------
  # 6. The same on S3 (s3s-fs on 127.0.0.1); <root>/<bucket> is the bucket
  # -------------------------------------------------------------------------
  s3_start
  B=$S3_ROOT/$S3_BUCKET
  push_each s-lz4 s3 "lz4" "s3://$S3_BUCKET/lz4" "$B/lz4" CAIRN_COMPRESSION=lz4
  burst s-burst8 s3 8 "s3://$S3_BUCKET/burst8" "$B/burst8"
  burst s-burst0 s3 0 "s3://$S3_BUCKET/burst0" "$B/burst0"
  fetch_each s-fetch0 s3 0 "s3://$S3_BUCKET/lz4"
  fetch_each s-fetch8 s3 8 "s3://$S3_BUCKET/lz4"
  s3_stop
  # The second S3 implementation (moto: in memory, one Python process).
  moto_start
  push_each m-lz4 moto "lz4" "s3://$MOTO_BUCKET/lz4" "moto:lz4/" CAIRN_COMPRESSION=lz4
  burst m-burst8 moto 8 "s3://$MOTO_BUCKET/burst8" "moto:burst8/"
  fetch_each m-fetch8 moto 8 "s3://$MOTO_BUCKET/lz4"
  moto_stop
  # Azure Blob Storage (Azurite: one Node.js process, on disk).
  azurite_start
  A="az://$AZ_ACCOUNT/$AZ_CONTAINER"
  push_each a-lz4 azure "lz4" "$A/lz4" "azure:lz4/" CAIRN_COMPRESSION=lz4
  burst a-burst8 azure 8 "$A/burst8" "azure:burst8/"
  fetch_each a-fetch8 azure 8 "$A/lz4"
  azurite_stop
  unset "${!CAIRN_@}" AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
fi

# ---------------------------------------------------------------------------
# 7. pgBackRest, sync mode, posix repository, lz4
# ---------------------------------------------------------------------------
if ((HAVE_PGBR)); then
  # pgBackRest takes an absolute WAL path (a relative one is taken relative to
  # pg1-path); it checks each segment's header against the stanza's system id,
  # which matches since the corpus comes from that cluster.
  log "pgbackrest: archive-push per segment"
  start_run pgbr-push
  for s in "${SEGS[@]}"; do run_call "${PGBR_CMD[@]}" archive-push "$CORPUS/$s"; done
  check_archive "$PGBR/repo/archive"
  add_row pgbr-push pgbackrest "archive-push lz4" "$(stored_bytes "$PGBR/repo/archive")"

  log "pgbackrest: burst of $NSEG archive-push calls"
  start_run pgbr-burst
  for s in "${SEGS[@]}"; do run_call "${PGBR_CMD[@]}" --repo1-path="$PGBR/repo-burst" archive-push "$CORPUS/$s"; done
  check_archive "$PGBR/repo-burst/archive"
  add_row pgbr-burst pgbackrest "burst lz4 (archive-push)" "$(stored_bytes "$PGBR/repo-burst/archive")"

  log "pgbackrest: archive-get per segment"
  d=$WORK/pgbr-get
  mkdir_pg "$d" "$d/pg_wal"
  mkdir -p "$d/restored"
  start_run pgbr-get
  for s in "${SEGS[@]}"; do
    run_call "${PGBR_CMD[@]}" archive-get "$s" "$d/pg_wal/RECOVERYXLOG"
    mv "$d/pg_wal/RECOVERYXLOG" "$d/restored/$s"
  done
  verify_restored "$d/restored"
  add_row pgbr-get pgbackrest "archive-get" -
  rm -rf "$d"
fi

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
echo
echo "WAL benchmark: $NSEG segments of 16 MiB ($(nproc) CPUs, $(uname -r))"
[[ $ONLY_BASELINES == 1 ]] || echo "cairn: $CAIRN ($("$CAIRN" --version 2>/dev/null || echo '?'))"
((HAVE_PGBR)) && echo "pgBackRest: $(pgbackrest version)"
echo
printf '%-10s | %-30s | %5s | %8s | %9s | %8s | %6s | %12s\n' \
  backend variant calls "total s" "s/segment" "MB/s" ratio "peak RSS MiB"
printf '%s\n' "-----------+--------------------------------+-------+----------+-----------+----------+--------+-------------"
printf '%s\n' "${ROWS[@]}"
echo
echo "ratio = stored bytes / raw bytes; peak RSS = max over the calls (MiB); MB = 10^6 bytes."
print_noisy_runs

if ((HAVE_PGBR)) && [[ $ONLY_BASELINES != 1 ]]; then
  echo
  echo "cairn (local directory) / pgBackRest (posix repo), lower is better:"
  # compare <label> <cairn figure> <pgbr figure> <target> <unit>
  compare() {
    awk -v l="$1" -v c="$2" -v p="$3" -v t="$4" -v u="$5" 'BEGIN {
      r = c / p
      printf "  %-40s %8.4f / %8.4f %-9s = %5.2f  (target <= %.1f)  %s\n", l, c, p, u, r, t, (r <= t) ? "MET" : "MISSED"
    }'
  }
  compare "per-segment push, lz4" "${SECS_PER_SEG[l-lz4]}" "${SECS_PER_SEG[pgbr-push]}" 1.0 s/segment
  compare "64-segment burst, lookahead 8" "${TOTAL_SECS[l-burst8]}" "${TOTAL_SECS[pgbr-burst]}" 0.5 "s total"
  compare "wal-fetch prefetch 8 vs archive-get" "${SECS_PER_SEG[l-fetch8]}" "${SECS_PER_SEG[pgbr-get]}" 0.5 s/segment
fi
