#!/usr/bin/env bash
# bench-backup.sh — how fast cairn takes and restores base backups, next to tar,
# pg_basebackup and pgBackRest.
#
# Usage (as root, on Debian with PostgreSQL 15 server binaries):
#   cargo build --release && scripts/bench-backup.sh [path-to-cairn]   # default: target/release/cairn
#
# Everything happens in one temporary directory with a throw-away pgbench cluster
# (scale 100, about 1.5 GB of not trivially compressible data) on a free port of
# 127.0.0.1; the machine's own clusters are never touched. Every backup is taken of
# the same running, idle cluster in the same invocation, so the figures are
# comparable, and every restore is compared file by file with that cluster.
# See docs/BENCHMARKS.md for what each figure means.
#
# BENCH_SCALE=<n>          pgbench scale (default 100: about 1.5 GB)
# BENCH_SIZE_FACTOR=<k>    multiplies the scale (2: a cluster twice the size, for peak RSS)
# BENCH_ONLY_BASELINES=1   runs only the cluster, tar, pg_basebackup and pgBackRest parts (no cairn).
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and awk must use '.' as the decimal point
# No libpq setting of the caller's may reach PostgreSQL's tools or cairn (the ones
# the benchmark needs are exported below), nor a PGDATA name the script reuses.
unset "${!PG@}"

readonly PGBIN=/usr/lib/postgresql/15/bin
readonly S3_BUCKET=bench
readonly S3_ACCESS_KEY=bench S3_SECRET_KEY=benchsecret
readonly PARALLEL=2 # cairn's CAIRN_BACKUP_CONCURRENCY and pgBackRest's process-max
readonly ONLY_BASELINES=${BENCH_ONLY_BASELINES:-0}
readonly BASE_SCALE=${BENCH_SCALE:-100} SIZE_FACTOR=${BENCH_SIZE_FACTOR:-1}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CAIRN=${1:-$SCRIPT_DIR/../target/release/cairn}

. "$SCRIPT_DIR/lib/bench.sh"
# How the runs differ from bench-wal's: backup-push prints the backup name on stdout;
# `sync` before each, so that writes left over by the previous run are not flushed
# while this one is timed; a failure may come from the cluster, so its report shows
# the libpq settings and the cluster's log.
KEEP_STDOUT=1 SYNC_BEFORE_RUN=1 FAILURE_ENV='CAIRN_|AWS_ACCESS|PGHOST|PGPORT|PGUSER' FAILURE_PG_LOG=1

[[ $BASE_SCALE =~ ^[1-9][0-9]*$ ]] || die "BENCH_SCALE must be a positive integer, not '$BASE_SCALE'"
[[ $SIZE_FACTOR =~ ^[1-9][0-9]*$ ]] || die "BENCH_SIZE_FACTOR must be a positive integer, not '$SIZE_FACTOR'"
readonly SCALE=$((BASE_SCALE * SIZE_FACTOR))

# ---------------------------------------------------------------------------
# Preconditions and tools
# ---------------------------------------------------------------------------
((EUID == 0)) || die "run as root (PostgreSQL-side commands are run as the postgres user)"
id postgres >/dev/null 2>&1 || die "no postgres user"
[[ -x $PGBIN/initdb && -x $PGBIN/pgbench && -x $PGBIN/pg_basebackup ]] ||
  die "PostgreSQL 15 server binaries (initdb, pgbench, pg_basebackup) not found in $PGBIN"
[[ $ONLY_BASELINES == 1 ]] || require_cairn

install_tools jq jq "reads backup-list --json"
isolate_env

# ---------------------------------------------------------------------------
# Work directory
# ---------------------------------------------------------------------------
LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg) # the machine may be shared: reported with the figures
make_work_dir /tmp/cairn-bench-backup.XXXXXX
cd "$WORK"
PGDATA=$WORK/pgdata SOCK=$WORK/sock WAL_ARCHIVE=$WORK/wal-archive

# dir_bytes <path>: total size of the regular files under path (or of the file).
dir_bytes() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%.0f", s }'; }

# ---------------------------------------------------------------------------
# Results: each run is one process call, timed from outside by run_call
# ---------------------------------------------------------------------------
declare -A SECS MBPS RSS CPU STORE_CPU
# add_row <id> <tool> <variant> <stored bytes or "-"> : records the current run.
add_row() {
  local id=$1 tool=$2 variant=$3 stored=$4 row rss cpu store
  rss=$(peak_rss_mib) cpu=$(cpu_secs) store=$(store_cpu_secs)
  row=$(awk -v us="$CALL_US" -v raw="$RAW_BYTES" -v st="$stored" -v rss="$rss" \
    -v cpu="$cpu" -v store="$store" -v t="$tool" -v v="$variant" 'BEGIN {
      s = us / 1e6
      mb = (st == "-") ? "-" : sprintf("%.1f", st / 1e6)
      ratio = (st == "-") ? "-" : sprintf("%.3f", st / raw)
      printf "%-13s | %-36s | %8.2f | %7.1f | %9s | %6s | %12s | %5.2f | %5s\n", t, v, s, raw / 1e6 / s, mb, ratio, rss, cpu, store
    }')
  SECS[$id]=$(awk -v us="$CALL_US" 'BEGIN { printf "%.6f", us / 1e6 }')
  CPU[$id]=$cpu STORE_CPU[$id]=$store
  MBPS[$id]=$(awk -v us="$CALL_US" -v raw="$RAW_BYTES" 'BEGIN { printf "%.3f", raw / 1e6 / (us / 1e6) }')
  RSS[$id]=$rss
  record_row "$id" "$row"
}

# ---------------------------------------------------------------------------
# Restore verification
# ---------------------------------------------------------------------------
# What legitimately differs between a running cluster and a restore of its backup,
# or is left out of backups (PostgreSQL's docs, "Backing Up the Data Directory"):
# whole directories (relative to the data directory) and file names anywhere. The
# recovery signal files are what restore tools may add.
PRUNE=(-path ./pg_wal -o -path './pg_stat*' -o -path ./pg_replslot -o -path ./pg_dynshmem -o -path ./pg_notify
  -o -path ./pg_serial -o -path ./pg_snapshots -o -path ./pg_subtrans -o -name 'pgsql_tmp*')
SKIP=(-path ./global/pg_control -o -name backup_label -o -name backup_label.old -o -name tablespace_map
  -o -name tablespace_map.old -o -name pg_internal.init -o -name 'postmaster.*'
  -o -name recovery.signal -o -name standby.signal)

# data_manifest <dir>: every directory ("d <path>") and regular file ("<md5>  <path>")
# of a data directory, sorted, without the parts above.
data_manifest() {
  (
    cd "$1"
    find . -mindepth 1 \( "${PRUNE[@]}" \) -prune -o -type d -printf 'd %p\n' | sort
    find . -mindepth 1 \( "${PRUNE[@]}" \) -prune -o \( "${SKIP[@]}" \) -o ! -type d -printf '%p\0' |
      sort -z | xargs -0 -r md5sum
  )
}

# verify_restore <dir> <with backup_label: 0|1>: the restored data directory must hold
# the same directories and byte-identical files as the cluster; a restore of an
# online backup also needs backup_label, any restore pg_control.
verify_restore() {
  local d=$1 f need=(global/pg_control)
  (($2)) && need+=(backup_label)
  for f in "${need[@]}"; do
    [[ -f $d/$f ]] || die "restore in $d has no $f"
  done
  data_manifest "$d" >"$WORK/restored.manifest"
  if ! cmp -s "$WORK/ref.manifest" "$WORK/restored.manifest"; then
    echo "bench-backup: restore in $d differs from the cluster (< cluster, > restore):" >&2
    diff "$WORK/ref.manifest" "$WORK/restored.manifest" | grep '^[<>]' | head -n 20 >&2
    exit 1
  fi
}

# ---------------------------------------------------------------------------
# 1. The cluster: pgbench, its accounts' filler made random, running and idle
# ---------------------------------------------------------------------------
export PGHOST=127.0.0.1 PGPORT PGUSER=postgres # for pg_basebackup and cairn; init_cluster sets PGPORT
make_pgbench_cluster "$SCALE" "$WAL_ARCHIVE"

# pgBackRest: sync archive-push, posix repository, lz4, 2 processes.
if ((HAVE_PGBR)); then
  pgbr_setup repo1-retention-full=2 compress-type=lz4 "process-max=$PARALLEL" start-fast=y
fi

# archive_command: every WAL file goes to cairn's two WAL archives, the local
# directory and the S3 bucket (cairn publishes a backup only once its WAL is in the
# storage the backup goes to, so each cairn run backs up into one of them), and to
# pgBackRest's repository, so that each tool finds the end-of-backup segment
# archived, as it waits for. The shell runs it as postgres, cwd = PGDATA, in the
# postmaster's environment (no CAIRN_* nor AWS_* variable); it fails if any part
# fails. pgBackRest refuses to back up unless its name is in archive_command, hence
# no wrapper script.
ARCHIVE_PARTS=()
if [[ $ONLY_BASELINES != 1 ]]; then
  s3_start
  ARCHIVE_PARTS+=("CAIRN_STORAGE=file://$WAL_ARCHIVE CAIRN_COMPRESSION=lz4 CAIRN_LOG_LEVEL=warn $CAIRN wal-push %p")
  # moto's part is a no-op until its run starts moto and names the port in
  # $WORK/moto-port, so that its slower uploads delay no other run's wait for
  # its end-of-backup segment (and archive_command, in PGDATA, never changes).
  cat >"$WORK/moto-archive" <<EOF
#!/bin/sh
[ -e "$WORK/moto-port" ] || exit 0
exec env CAIRN_STORAGE=s3://$MOTO_BUCKET/lz4 CAIRN_S3_ENDPOINT=http://127.0.0.1:\$(cat "$WORK/moto-port") \\
  CAIRN_S3_REGION=us-east-1 CAIRN_S3_FORCE_PATH_STYLE=true AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY \\
  AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY CAIRN_COMPRESSION=lz4 CAIRN_LOG_LEVEL=warn $CAIRN wal-push "\$1"
EOF
  chmod 755 "$WORK/moto-archive"
  ARCHIVE_PARTS+=("$WORK/moto-archive %p")
  # Azurite's the same way, while its runs last ($WORK/azure-port).
  cat >"$WORK/azure-archive" <<EOF
#!/bin/sh
[ -e "$WORK/azure-port" ] || exit 0
exec env CAIRN_STORAGE=az://$AZ_ACCOUNT/$AZ_CONTAINER/lz4 \\
  CAIRN_AZURE_ENDPOINT=http://127.0.0.1:\$(cat "$WORK/azure-port")/$AZ_ACCOUNT AZURE_STORAGE_KEY=$AZ_KEY \\
  CAIRN_COMPRESSION=lz4 CAIRN_LOG_LEVEL=warn $CAIRN wal-push "\$1"
EOF
  chmod 755 "$WORK/azure-archive"
  ARCHIVE_PARTS+=("$WORK/azure-archive %p")
  ARCHIVE_PARTS+=("CAIRN_STORAGE=s3://$S3_BUCKET/lz4 CAIRN_S3_ENDPOINT=http://127.0.0.1:$S3_PORT CAIRN_S3_REGION=us-east-1 CAIRN_S3_FORCE_PATH_STYLE=true AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY CAIRN_COMPRESSION=lz4 CAIRN_LOG_LEVEL=warn $CAIRN wal-push %p")
fi
((HAVE_PGBR)) && ARCHIVE_PARTS+=("pgbackrest --config=$PGBR_CONF --stanza=bench archive-push %p")
((${#ARCHIVE_PARTS[@]})) || ARCHIVE_PARTS=(/bin/true)
ARCHIVE_COMMAND=$(printf ' && %s' "${ARCHIVE_PARTS[@]}")
ARCHIVE_COMMAND=${ARCHIVE_COMMAND# && }
[[ $ARCHIVE_COMMAND =~ ^[-A-Za-z0-9_.,:/=%+\&\ ]+$ ]] || die "unexpected characters in archive_command: $ARCHIVE_COMMAND"

cat >"$PGDATA/bench_phase.conf" <<EOF
wal_level = replica
max_wal_senders = 10
archive_mode = on
archive_command = '$ARCHIVE_COMMAND'
EOF
pg_start

if ((HAVE_PGBR)); then
  "${PGBR_CMD[@]}" stanza-create >"$WORK/pgbr-stanza.log" 2>&1 || { cat "$WORK/pgbr-stanza.log" >&2; die "pgbackrest stanza-create failed"; }
fi

# Make sure archiving works before anything waits for it.
wait_archiving

# PGDATA bytes: what every MB/s figure divides, the same for backups and restores.
RAW_BYTES=$(find "$PGDATA" -path "$PGDATA/pg_wal" -prune -o -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%.0f", s }')
log "PGDATA: $((RAW_BYTES / 1000000)) MB outside pg_wal (pgbench scale $SCALE); cluster running, idle"
# The reference restores are compared with; taken again at the end, to show that
# the cluster did not change under the backups. It also reads PGDATA into the page
# cache, so that every run reads it from there.
data_manifest "$PGDATA" >"$WORK/ref.manifest"
grep -q '  \./base/' "$WORK/ref.manifest" && grep -q '  \./global/' "$WORK/ref.manifest" ||
  die "the reference list of $PGDATA has no files under base/ or global/"
find "$PGDATA" -path "$PGDATA/pg_wal" -prune -o -type f -exec cat {} + >/dev/null

# ---------------------------------------------------------------------------
# 2. Floor: tar -cf of the data directory, tar -xf of that
# ---------------------------------------------------------------------------
log "tar -cf (floor)"
start_run tar-c
run_call tar -cf "$WORK/floor.tar" -C "$PGDATA" --exclude='./pg_wal/*' .
add_row tar-c tar "tar -cf (floor)" "$(dir_bytes "$WORK/floor.tar")"

log "tar -xf (floor)"
mkdir -m 700 "$WORK/restore-tar"
start_run tar-x
run_call tar -xf "$WORK/floor.tar" -C "$WORK/restore-tar"
# tar does not make its files durable; how long that would take is reported apart.
t0=${EPOCHREALTIME/./}
sync
TAR_X_SYNC=$(awk -v us="$((${EPOCHREALTIME/./} - t0))" 'BEGIN { printf "%.2f", us / 1e6 }')
verify_restore "$WORK/restore-tar" 0
add_row tar-x tar "tar -xf (floor)" -
rm -rf "$WORK/restore-tar" "$WORK/floor.tar"

# ---------------------------------------------------------------------------
# 3. pg_basebackup: tar format, no WAL, lz4 on the client side
# ---------------------------------------------------------------------------
log "pg_basebackup"
start_run pgbb
run_call "$PGBIN/pg_basebackup" -D "$WORK/pgbasebackup" -Ft -X none --compress=client-lz4 --checkpoint=fast --no-password
add_row pgbb pg_basebackup "-Ft -X none, client-lz4" "$(dir_bytes "$WORK/pgbasebackup")"
rm -rf "$WORK/pgbasebackup"

# ---------------------------------------------------------------------------
# 4. pgBackRest: full backup, lz4, 2 processes; restore into an empty directory
# ---------------------------------------------------------------------------
if ((HAVE_PGBR)); then
  log "pgbackrest backup"
  start_run pgbr-backup
  run_call "${PGBR_CMD[@]}" backup --type=full
  add_row pgbr-backup pgBackRest "backup --type=full, lz4, $PARALLEL processes" "$(dir_bytes "$PGBR/repo/backup")"

  log "pgbackrest restore"
  d=$WORK/restore-pgbr
  mkdir -m 700 "$d"
  chown postgres:postgres "$d"
  start_run pgbr-restore
  # --type=none: no recovery settings written, only the backup's files.
  run_call "${PGBR_CMD[@]}" restore --type=none --pg1-path="$d"
  verify_restore "$d" 1
  add_row pgbr-restore pgBackRest "restore, $PARALLEL processes" -
  rm -rf "$d"
fi

# ---------------------------------------------------------------------------
# cairn runs
# ---------------------------------------------------------------------------
declare -A BACKUP_NAME STORED
# push <id> <tool> <variant> <storage-url> <storage-dir> [VAR=value]...
# One backup-push of the running cluster into an empty storage (with PUSH_FLAGS, into
# one that holds PUSH_BEFORE backups already).
PUSH_FLAGS=() PUSH_BEFORE=0 RUN_PREFIX=()
# store_of <storage-url>: the pid of the server behind it (STORE_PID), or none.
store_of() {
  case $1 in
  "s3://$S3_BUCKET/"*) STORE_PID=$S3_PID ;;
  "s3://$MOTO_BUCKET/"*) STORE_PID=${MOTO_PID:-} ;;
  az://*) STORE_PID=${AZ_PID:-} ;;
  *) STORE_PID="" ;;
  esac
}
push() {
  local id=$1 tool=$2 variant=$3 url=$4 dir=$5 name
  shift 5
  log "$tool: backup-push $variant"
  cairn_env "$url" CAIRN_BACKUP_CONCURRENCY="$PARALLEL" "$@"
  # The local directory backend wants its directory to exist (like any repository).
  [[ $url != file://* ]] || mkdir -p "$dir"
  store_of "$url"
  start_run "$id"
  # A remote backup reads no data directory: the server streams it.
  local target=("$PGDATA")
  [[ " ${PUSH_FLAGS[*]} " != *" --remote "* ]] || target=()
  run_call "${RUN_PREFIX[@]}" "$CAIRN" backup-push "${PUSH_FLAGS[@]}" "${target[@]}"
  name=$(awk 'NF { l = $0 } END { print l }' "$RUN_OUT")
  [[ -n $name ]] || die "backup-push printed no backup name ($tool, $variant)"
  BACKUP_NAME[$id]=$name
  # Not timed: the storage must list exactly this one backup.
  "$CAIRN" backup-list --json >"$WORK/list.$id" 2>"$WORK/list-err.$id" ||
    { cat "$WORK/list-err.$id" >&2; die "backup-list failed on $url"; }
  jq -e --arg n "$name" --argjson k $((PUSH_BEFORE + 1)) 'length == $k and .[-1].name == $n' "$WORK/list.$id" >/dev/null ||
    { cat "$WORK/list.$id" >&2; die "backup-list on $url does not list the backup $name after $PUSH_BEFORE others"; }
  STORED[$id]=$(jq '.[-1].stored_size' "$WORK/list.$id")
  log "backup $name ($(jq -r '.[-1].kind' "$WORK/list.$id")): raw_size $(jq '.[-1].raw_size' "$WORK/list.$id"), stored_size ${STORED[$id]}"
  # Every storage also holds the WAL (and maybe earlier backups): this backup's
  # own parts, as its manifest says.
  add_row "$id" "$tool" "backup-push $variant" "${STORED[$id]}"
  STORE_PID=""
}

# fetch <id> <tool> <variant> <storage-url> <backup name or LATEST> [VAR=value]...
# One backup-fetch into an empty directory, then compared with the cluster.
fetch() {
  local id=$1 tool=$2 variant=$3 url=$4 which=$5 d=$WORK/restore-$1
  shift 5
  log "$tool: backup-fetch $variant"
  cairn_env "$url" CAIRN_BACKUP_CONCURRENCY="$PARALLEL" "$@"
  mkdir -m 700 "$d"
  store_of "$url"
  start_run "$id"
  run_call "$CAIRN" backup-fetch "$d" "$which"
  add_row "$id" "$tool" "backup-fetch $variant" -
  STORE_PID=""
  verify_restore "$d" 1
  rm -rf "$d"
}

if [[ $ONLY_BASELINES != 1 ]]; then
  make_age_key

  # -------------------------------------------------------------------------
  # 5. backup-push to the local directory backend, where the WAL is (one
  #    backup at a time; its stored size is its manifest's)
  # -------------------------------------------------------------------------
  W=file://$WAL_ARCHIVE
  push l-lz4age "cairn local" "lz4+age" "$W" "$WAL_ARCHIVE" \
    CAIRN_COMPRESSION=lz4 CAIRN_AGE_RECIPIENTS="$AGE_RECIPIENT"
  rm -rf "$WAL_ARCHIVE/basebackups"
  push l-zstd "cairn local" "zstd" "$W" "$WAL_ARCHIVE" CAIRN_COMPRESSION=zstd
  rm -rf "$WAL_ARCHIVE/basebackups"
  # The same over the replication protocol (backup-push --remote), as a pod that
  # cannot see the data directory would take it: against pg_basebackup.
  PUSH_FLAGS=(--remote)
  push l-remote "cairn remote" "lz4, --remote" "$W" "$WAL_ARCHIVE" CAIRN_COMPRESSION=lz4
  PUSH_FLAGS=()
  rm -rf "$WAL_ARCHIVE/basebackups"
  # Last, so that it stays for backup-fetch.
  push l-lz4 "cairn local" "lz4" "$W" "$WAL_ARCHIVE" CAIRN_COMPRESSION=lz4

  # -------------------------------------------------------------------------
  # 6. backup-push to S3 (s3s-fs on 127.0.0.1, started with the cluster, whose
  #    WAL goes there too); <root>/<bucket> is the bucket
  # -------------------------------------------------------------------------
  B=$S3_ROOT/$S3_BUCKET
  push s-lz4 "cairn s3" "lz4" "s3://$S3_BUCKET/lz4" "$B/lz4" CAIRN_COMPRESSION=lz4

  # -------------------------------------------------------------------------
  # 7. backup-fetch: the local lz4 backup (LATEST) and the S3 one (by name)
  # -------------------------------------------------------------------------
  fetch l-fetch "cairn local" "lz4 (LATEST)" "$W" LATEST
  fetch s-fetch "cairn s3" "lz4 (by name)" "s3://$S3_BUCKET/lz4" "${BACKUP_NAME[s-lz4]}"
  # The second S3 implementation (moto, in memory, one Python process); the WAL
  # goes there too while it runs.
  moto_start
  echo "$MOTO_PORT" >"$WORK/moto-port"
  push m-lz4 "cairn moto" "lz4" "s3://$MOTO_BUCKET/lz4" "" CAIRN_COMPRESSION=lz4
  # moto serves a ranged GET by copying the whole object: one stream per part.
  fetch m-fetch "cairn moto" "lz4 (by name), 1 read per part" "s3://$MOTO_BUCKET/lz4" "${BACKUP_NAME[m-lz4]}" \
    CAIRN_STORAGE_PARALLEL_READS=1
  rm "$WORK/moto-port"
  moto_stop
  # Azure Blob Storage (Azurite: one Node.js process, on disk); the WAL goes
  # there too while it runs.
  azurite_start
  echo "$AZ_PORT" >"$WORK/azure-port"
  A="az://$AZ_ACCOUNT/$AZ_CONTAINER/lz4"
  push a-lz4 "cairn azure" "lz4" "$A" "" CAIRN_COMPRESSION=lz4
  fetch a-fetch "cairn azure" "lz4 (by name)" "$A" "${BACKUP_NAME[a-lz4]}"
  rm "$WORK/azure-port"
  azurite_stop
  rm -rf "$WAL_ARCHIVE/basebackups"
  # A store with a CPU of its own, as a remote one has: s3s-fs on the last
  # CPU, cairn on the others, for the local push and the S3 push alike. On
  # the benchmark's shared CPUs the server's MD5 of every byte (its ETags)
  # takes the CPU cairn needs (docs/BENCHMARKS.md).
  if (($(nproc) >= 2)); then
    last=$(($(nproc) - 1))
    taskset -apc "$last" "$S3_PID" >/dev/null
    RUN_PREFIX=(taskset -c "0-$((last - 1))")
    push l-pinned "cairn local" "lz4, cairn on CPUs 0-$((last - 1))" "$W" "$WAL_ARCHIVE" CAIRN_COMPRESSION=lz4
    rm -rf "$WAL_ARCHIVE/basebackups"
    PUSH_BEFORE=1
    push s-pinned "cairn s3" "lz4, s3s-fs on CPU $last" "s3://$S3_BUCKET/lz4" "$B/lz4" CAIRN_COMPRESSION=lz4
    # And as on AWS, where every upload carries a CRC32 (s3_checksum:
    # when_supported) and its body therefore goes unsigned.
    PUSH_BEFORE=2
    push s-pinned-crc "cairn s3" "lz4, CRC32, s3s-fs on CPU $last" "s3://$S3_BUCKET/lz4" "$B/lz4" \
      CAIRN_COMPRESSION=lz4 CAIRN_S3_CHECKSUM=when_supported
    RUN_PREFIX=() PUSH_BEFORE=0
    taskset -apc "0-$last" "$S3_PID" >/dev/null
  fi
  unset "${!CAIRN_@}" AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AZURE_STORAGE_KEY
fi

# The comparisons above hold only if the cluster did not change under the backups.
data_manifest "$PGDATA" >"$WORK/end.manifest"
if ! cmp -s "$WORK/ref.manifest" "$WORK/end.manifest"; then
  echo "bench-backup: the cluster's files changed during the benchmark (< before, > after):" >&2
  diff "$WORK/ref.manifest" "$WORK/end.manifest" | grep '^[<>]' | head -n 20 >&2
  exit 1
fi

# ---------------------------------------------------------------------------
# 8. Delta backups: a full backup, about 1% of pgbench_accounts changed, then a
#    delta and (for comparison) a full backup of the changed cluster; restores of
#    the chain and of that full. (The cluster changes here: after the check above.)
# ---------------------------------------------------------------------------
if [[ $ONLY_BASELINES != 1 ]]; then
  # Where the WAL is, as every cairn backup: the chain first, then (alone) the
  # full backup of the changed cluster.
  W=file://$WAL_ARCHIVE
  push d-full "cairn delta" "full lz4, before the change" "$W" "$WAL_ARCHIVE" CAIRN_COMPRESSION=lz4
  log "changing 1% of pgbench_accounts (rows 1..$((SCALE * 1000)))"
  psql_ -c "update pgbench_accounts set abalance = abalance + 1 where aid <= $((SCALE * 1000))" >/dev/null
  # No vacuum here: it would set hint bits on pages it does not otherwise change,
  # which no backup tracks (they need no WAL and are recomputed), so the restore
  # would differ from the cluster in bytes that do not matter.
  psql_ -c "checkpoint"
  data_manifest "$PGDATA" >"$WORK/ref.manifest"
  PUSH_FLAGS=(--delta) PUSH_BEFORE=1
  push d-delta "cairn delta" "delta lz4, 1% changed" "$W" "$WAL_ARCHIVE" CAIRN_COMPRESSION=lz4
  fetch d-fetch-chain "cairn delta" "the chain (full + delta)" "$W" LATEST
  rm -rf "$WAL_ARCHIVE/basebackups"
  PUSH_FLAGS=(--full) PUSH_BEFORE=0
  push d-full2 "cairn delta" "full lz4, after the change" "$W" "$WAL_ARCHIVE" CAIRN_COMPRESSION=lz4
  fetch d-fetch-full "cairn delta" "the full after the change" "$W" LATEST
  rm -rf "$WAL_ARCHIVE/basebackups"
  unset "${!CAIRN_@}"
  s3_stop
fi

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
echo
echo "Base backup benchmark: PGDATA $((RAW_BYTES / 1000000)) MB (pgbench scale $SCALE," \
  "pg_database_size $((DB_BYTES / 1000000)) MB), $(nproc) CPUs, $(uname -r)"
echo "load average (1 min) before the benchmark: $LOAD_BEFORE"
echo "PostgreSQL: $("$PGBIN/postgres" --version)"
[[ $ONLY_BASELINES == 1 ]] || echo "cairn: $CAIRN ($("$CAIRN" --version 2>/dev/null || echo '?'))"
((HAVE_PGBR)) && echo "pgBackRest: $(pgbackrest version)"
echo
printf '%-13s | %-36s | %8s | %7s | %9s | %6s | %12s | %5s | %5s\n' tool run seconds "MB/s" "stored MB" ratio "peak RSS MiB" "CPU s" store
printf '%s\n' "--------------+--------------------------------------+----------+---------+-----------+--------+--------------+-------+------"
printf '%s\n' "${ROWS[@]}"
echo
echo "MB/s = PGDATA bytes (outside pg_wal) / seconds; ratio = stored bytes / PGDATA bytes;"
echo "peak RSS = largest single process (MiB); MB = 10^6 bytes; CPU s = user + system seconds of the"
echo "run's processes; store = CPU seconds of the storage server in that time. Every restore matched the cluster."
echo "tar does not fsync: a sync right after tar -xf took $TAR_X_SYNC s more."
print_noisy_runs

if [[ $ONLY_BASELINES != 1 ]]; then
  echo
  echo "Targets (cairn on the local directory backend, lz4, concurrency $PARALLEL):"
  # target <label> <a> <b> <unit> <ratio op: >= or <=> <target>: a / b against the target.
  target() {
    awk -v l="$1" -v a="$2" -v b="$3" -v u="$4" -v op="$5" -v t="$6" 'BEGIN {
      r = a / b
      ok = (op == ">=") ? (r >= t) : (r <= t)
      printf "  %-42s %9.2f / %9.2f %-5s = %5.2f  (target %s %.1f)  %s\n", l, a, b, u, r, op, t, ok ? "MET" : "MISSED"
    }'
  }
  if ((HAVE_PGBR)); then
    target "backup-push vs pgBackRest backup" "${MBPS[l-lz4]}" "${MBPS[pgbr-backup]}" MB/s ">=" 1.2
    target "backup-fetch vs pgBackRest restore" "${MBPS[l-fetch]}" "${MBPS[pgbr-restore]}" MB/s ">=" 1.2
  fi
  target "backup-fetch vs tar -xf (floor)" "${SECS[l-fetch]}" "${SECS[tar-x]}" s "<=" 1.5
  target "backup-push --remote vs pg_basebackup" "${MBPS[l-remote]}" "${MBPS[pgbb]}" MB/s ">=" 1.0
  echo
  echo "Targets for the network stores (throughput against the local directory's, lz4):"
  for pair in "s3s-fs:s" "moto:m" "Azurite:a"; do
    store=${pair%%:*} p=${pair##*:}
    target "backup-push to $store vs local" "${MBPS[$p-lz4]}" "${MBPS[l-lz4]}" MB/s ">=" 0.8
    target "backup-fetch from $store vs local" "${MBPS[$p-fetch]}" "${MBPS[l-fetch]}" MB/s ">=" 0.8
  done
  if [[ -n ${MBPS[s-pinned]:-} ]]; then
    target "push, s3s-fs on a CPU of its own" "${MBPS[s-pinned]}" "${MBPS[l-pinned]}" MB/s ">=" 0.8
    target "the same, CRC32 (unsigned bodies)" "${MBPS[s-pinned-crc]}" "${MBPS[l-pinned]}" MB/s ">=" 0.8
  fi
  # On a machine whose CPUs the server shares, the pushes' time is the sum of
  # both sides' CPU: what each side used says which one a missed target is on.
  echo "Where a push's CPU goes (seconds: cairn's own, and the server's):"
  for id in l-lz4 s-lz4 m-lz4 a-lz4; do
    printf '  %-13s cairn %6.2f   server %6s\n' "$id" "${CPU[$id]}" "${STORE_CPU[$id]}"
  done
  max_rss=0 max_id=""
  for id in l-lz4 l-lz4age l-zstd l-remote s-lz4 l-fetch s-fetch; do
    if awk -v a="${RSS[$id]}" -v b="$max_rss" 'BEGIN { exit !(a > b) }'; then max_rss=${RSS[$id]} max_id=$id; fi
  done
  awk -v r="$max_rss" -v id="$max_id" 'BEGIN {
    printf "  %-42s %9.1f MiB (%s)%*s(target <= 256)  %s\n", "peak RSS of any cairn run", r, id, 12 - length(id), "", (r <= 256) ? "MET" : "MISSED"
  }'
  echo
  echo "Delta after changing 1% of pgbench_accounts (full after the change vs delta):"
  awk -v fs="${SECS[d-full2]}" -v ds="${SECS[d-delta]}" -v fb="${STORED[d-full2]}" -v db="${STORED[d-delta]}" \
    -v fr="${SECS[d-fetch-full]}" -v cr="${SECS[d-fetch-chain]}" 'BEGIN {
    printf "  backup-push      %7.2f s vs %7.2f s  (delta / full = %.2f)\n", ds, fs, ds / fs
    printf "  stored           %7.1f MB vs %7.1f MB (delta / full = %.3f)\n", db / 1e6, fb / 1e6, db / fb
    printf "  backup-fetch     %7.2f s vs %7.2f s  (chain / full = %.2f)\n", cr, fr, cr / fr
  }'
fi
