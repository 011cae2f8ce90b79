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

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf 'bench-wal: error: %s\n' "$*" >&2; exit 1; }

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

APT_UPDATED=0
# apt_install <pkg>...: installs packages, refreshing the index once if needed.
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1 && return 0
  if ((APT_UPDATED == 0)); then
    APT_UPDATED=1
    apt-get update -q >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1 && return 0
  fi
  return 1
}

[[ -x /usr/bin/time ]] || apt_install time || die "cannot install package 'time' (for peak RSS)"
if [[ $ONLY_BASELINES != 1 ]]; then
  command -v age-keygen >/dev/null || apt_install age || die "cannot install package 'age'"
  S3S_FS=$HOME/.cache/cairn-test-tools/bin/s3s-fs
  if [[ ! -x $S3S_FS ]]; then
    if command -v s3s-fs >/dev/null; then
      S3S_FS=$(command -v s3s-fs)
    else
      log "installing s3s-fs 0.14.1 (once, into ~/.cache/cairn-test-tools)"
      cargo install -q --root "$HOME/.cache/cairn-test-tools" s3s-fs@0.14.1 --features binary >&2 ||
        die "cannot install s3s-fs"
    fi
  fi
fi
HAVE_PGBR=1
command -v pgbackrest >/dev/null || apt_install pgbackrest || HAVE_PGBR=0
((HAVE_PGBR)) || echo "pgbackrest: not installed"

# Nothing from the caller's environment may change what cairn does (and cairn
# rejects CAIRN_* names it does not know), nor may AWS settings leak in.
unset "${!CAIRN_@}" "${!AWS_@}"
export AWS_EC2_METADATA_DISABLED=true

# ---------------------------------------------------------------------------
# Work directory, cleanup
# ---------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/cairn-bench.XXXXXX)
chmod 755 "$WORK"
chown postgres:postgres "$WORK"
PGDATA=$WORK/pgdata SOCK=$WORK/sock CORPUS=$WORK/corpus
PG_RUNNING=0 S3_PID=""

# pids of cairn processes (e.g. detached prefetch workers) running in our work dir.
our_cairn_pids() {
  local p
  [[ -n ${CAIRN:-} && -x ${CAIRN:-/nonexistent} ]] || return 0
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/exe" 2>/dev/null) == "$CAIRN" ]] || continue
    [[ $(readlink "$p/cwd" 2>/dev/null) == "$WORK"* ]] || continue
    echo "${p#/proc/}"
  done
}

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

cleanup() {
  local rc=$? pid
  set +e
  cd /
  if [[ -n $S3_PID ]]; then kill "$S3_PID" 2>/dev/null; wait "$S3_PID" 2>/dev/null; fi
  ((PG_RUNNING)) && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1
  for pid in $(our_cairn_pids); do kill "$pid" 2>/dev/null; done
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port: a TCP port nothing on this machine uses right now.
free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 40000))
    [[ -z $(ss -Htan "sport = :$p" 2>/dev/null) ]] || continue
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    echo "$p"
    return 0
  done
  die "no free port found"
}

# mkdir_pg <dir>...: directories the postgres user must write to.
mkdir_pg() { mkdir -p "$@" && chown postgres:postgres "$@"; }

psql_() { runuser -u postgres -- "$PGBIN/psql" -X -q -At -h "$SOCK" -p "$PGPORT" -d postgres -v ON_ERROR_STOP=1 "$@"; }

# ---------------------------------------------------------------------------
# Timing: every call is run like PostgreSQL runs it — one process, one segment
# ---------------------------------------------------------------------------
CALL_US=0   # wall time of the calls of the current run, microseconds
RSS_FILE="" # /usr/bin/time appends each call's peak RSS (KiB) here
RUN_ERR=""  # stderr of the run's calls, appended (detached prefetch workers write here too)
NOISY_RUNS=()

start_run() {
  CALL_US=0 RSS_FILE=$WORK/rss.$1 RUN_ERR=$WORK/stderr.$1
  : >"$RSS_FILE"
  : >"$RUN_ERR"
}

# run_call <cmd>...: runs one call under /usr/bin/time; only the call itself is timed
# (bookkeeping such as renaming .ready files is not). Any failure stops the benchmark
# and prints everything needed to reproduce it.
run_call() {
  local t0 t1 rc=0 off
  off=$(stat -c %s "$RUN_ERR")
  t0=${EPOCHREALTIME/./}
  /usr/bin/time -f %M -a -o "$RSS_FILE" "$@" >/dev/null 2>>"$RUN_ERR" || rc=$?
  t1=${EPOCHREALTIME/./}
  CALL_US=$((CALL_US + t1 - t0))
  if ((rc != 0)); then
    {
      echo "bench-wal: FAILED call (exit code $rc)"
      echo "  cwd:     $PWD"
      echo "  command: $*"
      echo "  env:     $(env | grep -E '^(CAIRN_|AWS_ACCESS)' | sort | tr '\n' ' ')"
      echo "  stderr:"
      tail -c "+$((off + 1))" "$RUN_ERR" | sed 's/^/    /'
    } >&2
    exit 1
  fi
}

peak_rss_mib() { awk '/^[0-9]+$/ { if ($1 > m) m = $1 } END { printf "%.1f", m / 1024 }' "$RSS_FILE"; }

# stored_bytes <dir>: total size of the WAL objects (24-hex-digit names) under dir.
stored_bytes() {
  find "$1" -type f -regextype posix-extended -regex '.*/[0-9A-F]{24}([.-].*)?' -printf '%s\n' |
    awk '{ s += $1 } END { printf "%d", s }'
}
stored_count() {
  find "$1" -type f -regextype posix-extended -regex '.*/[0-9A-F]{24}([.-].*)?' | wc -l
}

# Results, in run order: one table row per run.
ROWS=()
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
  ROWS+=("$row")
  # Successful calls should be silent at log level warn: keep whatever they said.
  if [[ -s $RUN_ERR ]]; then
    NOISY_RUNS+=("$id")
    cp "$RUN_ERR" "$WORK/noisy.$id"
  fi
  TOTAL_SECS[$id]=$(awk -v us="$CALL_US" 'BEGIN { printf "%.6f", us / 1e6 }')
  SECS_PER_SEG[$id]=$(awk -v us="$CALL_US" -v n="$NSEG" 'BEGIN { printf "%.6f", us / 1e6 / n }')
  log "done: $row"
}

# ---------------------------------------------------------------------------
# 1. Corpus: 64 real, not trivially compressible segments from a throw-away cluster
# ---------------------------------------------------------------------------
PGPORT=$(free_port)
mkdir_pg "$SOCK" "$CORPUS"
chmod 700 "$SOCK"
log "initdb in $PGDATA, port $PGPORT"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --no-sync >"$WORK/initdb.log" 2>&1 ||
  { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
# archive_command copies each completed segment into the corpus directory. fsync=off
# and a large max_wal_size only make the corpus faster to produce.
cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$SOCK'
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
  PGBR=$WORK/pgbackrest
  mkdir_pg "$PGBR" "$PGBR/log" "$PGBR/lock" "$PGBR/spool" "$PGBR/repo"
  PGBR_CONF=$PGBR/pgbackrest.conf
  cat >"$PGBR_CONF" <<EOF
[global]
repo1-type=posix
repo1-path=$PGBR/repo
compress-type=lz4
archive-async=n
log-path=$PGBR/log
lock-path=$PGBR/lock
spool-path=$PGBR/spool
log-level-console=warn
log-level-stderr=warn
log-level-file=off

[bench]
pg1-path=$PGDATA
pg1-port=$PGPORT
pg1-socket-path=$SOCK
EOF
  chown postgres:postgres "$PGBR_CONF"
  # setpriv only switches user and execs (runuser would add a PAM session per call);
  # an array, not a function, so /usr/bin/time can run it.
  PGBR_CMD=(setpriv --reuid=postgres --regid=postgres --init-groups pgbackrest --config="$PGBR_CONF" --stanza=bench)
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
# cairn_env <storage-url> [VAR=value]...: exactly these settings for the next calls.
cairn_env() {
  unset "${!CAIRN_@}" AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
  export CAIRN_LOG_LEVEL=warn CAIRN_STORAGE=$1
  shift
  if [[ $CAIRN_STORAGE == s3://* ]]; then
    export CAIRN_S3_ENDPOINT=http://127.0.0.1:$S3_PORT CAIRN_S3_REGION=us-east-1 CAIRN_S3_FORCE_PATH_STYLE=true
    export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
  fi
  local kv
  for kv in "$@"; do export "${kv?}"; done
}

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
  AGE_KEY=$WORK/age.key
  age-keygen -o "$AGE_KEY" 2>/dev/null
  AGE_RECIPIENT=$(age-keygen -y "$AGE_KEY")
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
  S3_ROOT=$WORK/s3
  mkdir -p "$S3_ROOT/$S3_BUCKET"
  S3_PORT=$(free_port)
  "$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" \
    "$S3_ROOT" >"$WORK/s3s-fs.log" 2>&1 &
  S3_PID=$!
  for ((i = 0; ; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null && break
    kill -0 "$S3_PID" 2>/dev/null || { cat "$WORK/s3s-fs.log" >&2; die "s3s-fs exited"; }
    ((i < 100)) || die "s3s-fs does not listen on port $S3_PORT"
    sleep 0.1
  done
  B=$S3_ROOT/$S3_BUCKET
  push_each s-lz4 s3 "lz4" "s3://$S3_BUCKET/lz4" "$B/lz4" CAIRN_COMPRESSION=lz4
  burst s-burst8 s3 8 "s3://$S3_BUCKET/burst8" "$B/burst8"
  burst s-burst0 s3 0 "s3://$S3_BUCKET/burst0" "$B/burst0"
  fetch_each s-fetch0 s3 0 "s3://$S3_BUCKET/lz4"
  fetch_each s-fetch8 s3 8 "s3://$S3_BUCKET/lz4"
  kill "$S3_PID"
  wait "$S3_PID" 2>/dev/null || true
  S3_PID=""
  rm -rf "$S3_ROOT"
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
for id in "${NOISY_RUNS[@]}"; do
  echo
  echo "stderr of run $id ($(wc -l <"$WORK/noisy.$id") lines; first 10):"
  head -n 10 "$WORK/noisy.$id" | sed 's/^/  /'
done

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
