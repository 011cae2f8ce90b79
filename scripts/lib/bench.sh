# Sourced by scripts/bench-*.sh: what the benchmarks share. Sourcing only defines;
# each script calls the functions in its own order. The scripts set CAIRN, PGBIN,
# ONLY_BASELINES, S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY (and PGDATA, SOCK); the
# functions set WORK, PGPORT, S3S_FS, HAVE_PGBR, PGBR*, S3_*, AGE_* and the run
# counters below. Run as root.

# Errors carry the script's name: bench-wal, bench-backup.
BENCH_NAME=$(basename "$0" .sh)
log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf '%s: error: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# Tools and environment
# ---------------------------------------------------------------------------
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

# install_tools [<command> <package> <why>]...: /usr/bin/time (peak RSS); unless only
# the baselines run, age, the given commands and the s3s-fs S3 server (S3S_FS);
# pgBackRest if it can be had (HAVE_PGBR=1), as the comparison is optional.
install_tools() {
  [[ -x /usr/bin/time ]] || apt_install time || die "cannot install package 'time' (for peak RSS)"
  if [[ $ONLY_BASELINES != 1 ]]; then
    command -v age-keygen >/dev/null || apt_install age || die "cannot install package 'age'"
    while (($# >= 3)); do
      command -v "$1" >/dev/null || apt_install "$2" || die "cannot install package '$2' ($3)"
      shift 3
    done
    # The copy scripts/test.sh installs, else one on PATH, else install it there.
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
  # moto, the second S3 implementation (scripts/test.sh installs the same copy).
  MOTO_SERVER=$HOME/.cache/cairn-test-tools/moto-venv/bin/moto_server
  if [[ $ONLY_BASELINES != 1 && ! -x $MOTO_SERVER ]]; then
    log "installing moto 5.2.5 (once, into ~/.cache/cairn-test-tools/moto-venv)"
    python3 -m venv "$HOME/.cache/cairn-test-tools/moto-venv" &&
      "$HOME/.cache/cairn-test-tools/moto-venv/bin/pip" install -q "moto[server]==5.2.5" >&2 ||
      die "cannot install moto"
  fi
  # Azurite, Azure Blob Storage's emulator (scripts/test.sh installs the same copy).
  AZURITE_BLOB=$HOME/.cache/cairn-test-tools/azurite/node_modules/.bin/azurite-blob
  if [[ $ONLY_BASELINES != 1 && ! -x $AZURITE_BLOB ]]; then
    log "installing Azurite 3.37.0 (once, into ~/.cache/cairn-test-tools/azurite)"
    command -v npm >/dev/null || apt_install npm || die "cannot install npm"
    mkdir -p "$HOME/.cache/cairn-test-tools/azurite" &&
      npm install --silent --no-audit --no-fund --prefix "$HOME/.cache/cairn-test-tools/azurite" azurite@3.37.0 >&2 ||
      die "cannot install Azurite"
  fi
  HAVE_PGBR=1
  command -v pgbackrest >/dev/null || apt_install pgbackrest || HAVE_PGBR=0
  ((HAVE_PGBR)) || echo "pgbackrest: not installed"
}

# require_cairn: CAIRN names a binary (made absolute) that the postgres user can
# run, as archive_command and the drill do.
require_cairn() {
  [[ -x $CAIRN ]] || die "cairn binary $CAIRN not found; build it with 'cargo build --release'"
  CAIRN=$(realpath -e "$CAIRN")
  setpriv --reuid=postgres --regid=postgres --init-groups test -x "$CAIRN" ||
    die "the postgres user cannot run $CAIRN; make its directories o+rx"
}

# isolate_env: nothing from the caller's environment may change what cairn does (and
# cairn rejects CAIRN_* names it does not know), nor may AWS settings leak in.
isolate_env() {
  unset "${!CAIRN_@}" "${!AWS_@}"
  export AWS_EC2_METADATA_DISABLED=true
}

# ---------------------------------------------------------------------------
# Work directory, cleanup
# ---------------------------------------------------------------------------
# make_work_dir <mktemp template>: WORK, which the postgres user can use, removed
# with everything running in it when the script exits, however it exits.
make_work_dir() {
  WORK=$(mktemp -d "$1")
  chmod 755 "$WORK"
  chown postgres:postgres "$WORK"
  PG_RUNNING=0 S3_PID=""
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}

# pids of cairn processes running in our work dir (e.g. detached prefetch workers,
# or archive_command's).
our_cairn_pids() {
  local p
  [[ -n ${CAIRN:-} && -x ${CAIRN:-/nonexistent} ]] || return 0
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/exe" 2>/dev/null) == "$CAIRN" ]] || continue
    [[ $(readlink "$p/cwd" 2>/dev/null) == "$WORK"* ]] || continue
    echo "${p#/proc/}"
  done
}

cleanup() {
  local rc=$? pid
  set +e
  cd /
  if [[ -n $S3_PID ]]; then kill "$S3_PID" 2>/dev/null; wait "$S3_PID" 2>/dev/null; fi
  if [[ -n ${MOTO_PID:-} ]]; then kill "$MOTO_PID" 2>/dev/null; wait "$MOTO_PID" 2>/dev/null; fi
  if [[ -n ${AZ_PID:-} ]]; then kill "$AZ_PID" 2>/dev/null; wait "$AZ_PID" 2>/dev/null; fi
  ((PG_RUNNING)) && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1
  for pid in $(our_cairn_pids); do kill "$pid" 2>/dev/null; done
  rm -rf "$WORK"
  exit "$rc"
}

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

# ---------------------------------------------------------------------------
# The throw-away cluster (PGDATA, SOCK: set by the script)
# ---------------------------------------------------------------------------
# init_cluster [dir]...: initdb into PGDATA (with INITDB_EXTRA's options), reachable
# only on 127.0.0.1:PGPORT (a free port) and the socket directory SOCK; the dirs are
# made for postgres too. The script appends its own settings to postgresql.conf.
init_cluster() {
  PGPORT=$(free_port)
  mkdir_pg "$SOCK" "$@"
  chmod 700 "$SOCK"
  log "initdb in $PGDATA, port $PGPORT"
  runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --no-sync ${INITDB_EXTRA:-} >"$WORK/initdb.log" 2>&1 ||
    { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
  cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$SOCK'
EOF
}

psql_() { runuser -u postgres -- "$PGBIN/psql" -X -q -At -h "$SOCK" -p "$PGPORT" -d postgres -v ON_ERROR_STOP=1 "$@"; }

# pg_start, pg_stop: the cluster in PGDATA, logging to $WORK/postgres.log.
pg_start() {
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -l "$WORK/postgres.log" -w -t 120 start >/dev/null ||
    { tail -n 30 "$WORK/postgres.log" >&2; die "cannot start PostgreSQL"; }
  PG_RUNNING=1
}
pg_stop() {
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 300 stop >/dev/null
  PG_RUNNING=0
}

# make_pgbench_cluster <scale> [dir]...: init_cluster, then pgbench at that scale
# with its accounts' filler made random, frozen, checkpointed and stopped. Its
# postgresql.conf includes bench_phase.conf, which the script rewrites for the
# measurements (loading ran without WAL archiving).
make_pgbench_cluster() {
  local scale=$1
  shift
  init_cluster "$@"
  # bench_phase.conf holds what differs between loading (fast, no WAL archiving) and
  # the measurements (archiving on, as in production). No autovacuum: the data files
  # must not change while backups are taken.
  cat >>"$PGDATA/postgresql.conf" <<EOF
max_wal_size = 8GB
checkpoint_timeout = 1h
autovacuum = off
maintenance_work_mem = 256MB
include 'bench_phase.conf'
EOF
  cat >"$PGDATA/bench_phase.conf" <<EOF
wal_level = minimal
max_wal_senders = 0
archive_mode = off
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  chown postgres:postgres "$PGDATA/bench_phase.conf"
  pg_start

  log "pgbench -i -s $scale"
  runuser -u postgres -- "$PGBIN/pgbench" -i -q -s "$scale" -I dtg -h "$SOCK" -p "$PGPORT" postgres >"$WORK/pgbench.log" 2>&1 ||
    { tail -n 20 "$WORK/pgbench.log" >&2; die "pgbench -i failed"; }
  # pgbench's filler is blank; 64 hex digits of md5 carry 4 bits per byte, so the table
  # compresses about 2:1 at best, like real data. The new table is created in the
  # same transaction, so with wal_level=minimal it is written once, without WAL, and
  # has no dead rows.
  log "rewriting pgbench_accounts with random filler"
  psql_ <<EOF
begin;
create table pgbench_accounts_new (like pgbench_accounts including all) with (fillfactor = 100);
insert into pgbench_accounts_new
  select aid, bid, abalance, md5(random()::text) || md5(random()::text) from pgbench_accounts;
drop table pgbench_accounts;
alter table pgbench_accounts_new rename to pgbench_accounts;
commit;
EOF
  runuser -u postgres -- "$PGBIN/pgbench" -i -q -I p -h "$SOCK" -p "$PGPORT" postgres >>"$WORK/pgbench.log" 2>&1 ||
    { tail -n 20 "$WORK/pgbench.log" >&2; die "pgbench -i -I p failed"; }
  # Freeze and set hint bits now, so that no later read rewrites a page (the queries of
  # the backup tools would, and the next backup's checkpoint would write it out). The
  # second pass also freezes the pg_statistic rows that ANALYZE wrote.
  psql_ -c "vacuum (freeze, analyze)"
  psql_ -c "vacuum (freeze)"
  psql_ -c "checkpoint"
  DB_BYTES=$(psql_ -c "select pg_database_size('postgres')")
  log "pg_database_size: $((DB_BYTES / 1000000)) MB"
  pg_stop
}

# wait_archiving: switches to a new segment and waits until the archiver has
# stored the previous one, so that archive_command is known to work.
wait_archiving() {
  local last archived i
  psql_ -c "select pg_create_restore_point('bench')" >/dev/null
  last=$(psql_ -c "select pg_walfile_name(pg_switch_wal())")
  for ((i = 0; ; i++)); do
    archived=$(psql_ -c "select coalesce(last_archived_wal, '') from pg_stat_archiver")
    [[ $archived > $last || $archived == "$last" ]] && break
    if ((i >= 1200)); then
      tail -n 20 "$WORK/postgres.log" >&2
      die "the archiver did not reach $last (at '$archived'); see the log above"
    fi
    sleep 0.1
  done
}

# pgbr_setup [option=value]...: a pgBackRest configuration, PGBR_CONF, for the
# cluster as stanza "bench", with a posix repository in $PGBR/repo and these [global]
# options besides the common ones; PGBR_CMD runs pgbackrest with it as postgres.
pgbr_setup() {
  PGBR=$WORK/pgbackrest
  mkdir_pg "$PGBR" "$PGBR/log" "$PGBR/lock" "$PGBR/spool" "$PGBR/repo"
  PGBR_CONF=$PGBR/pgbackrest.conf
  {
    printf '%s\n' "[global]" "repo1-type=posix" "repo1-path=$PGBR/repo" "$@"
    cat <<EOF
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
  } >"$PGBR_CONF"
  chown postgres:postgres "$PGBR_CONF"
  # setpriv only switches user and execs (runuser would add a PAM session per call);
  # an array, not a function, so /usr/bin/time can run it.
  PGBR_CMD=(setpriv --reuid=postgres --regid=postgres --init-groups pgbackrest --config="$PGBR_CONF" --stanza=bench)
}

# ---------------------------------------------------------------------------
# S3 (s3s-fs on 127.0.0.1) and age
# ---------------------------------------------------------------------------
# s3_start: s3s-fs on a free port (S3_PORT, S3_PID), serving S3_ROOT=$WORK/s3 whose
# subdirectory S3_BUCKET is the bucket; returns once it listens.
s3_start() {
  local i
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
}

# moto_start: moto's S3 server (in memory) on a free port (MOTO_PORT, MOTO_PID),
# with the bucket MOTO_BUCKET; returns once the bucket exists.
readonly MOTO_BUCKET=bench-moto
moto_start() {
  local i
  MOTO_PORT=$(free_port)
  "$MOTO_SERVER" -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
  MOTO_PID=$!
  for ((i = 0; ; i++)); do
    curl -sf -X PUT "http://127.0.0.1:$MOTO_PORT/$MOTO_BUCKET" >/dev/null 2>&1 && break
    kill -0 "$MOTO_PID" 2>/dev/null || { cat "$WORK/moto.log" >&2; die "moto_server exited"; }
    ((i < 200)) || die "moto_server does not answer on port $MOTO_PORT"
    sleep 0.1
  done
}

moto_stop() {
  kill "$MOTO_PID"
  wait "$MOTO_PID" 2>/dev/null || true
  MOTO_PID=""
}

# Azurite's well-known development account (public, documented) and the
# benchmark's container.
readonly AZ_ACCOUNT=devstoreaccount1
readonly AZ_KEY=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==
readonly AZ_CONTAINER=bench-azure

# azurite_request <method> <path> <query>: a Blob request on the development
# account, signed with its shared key (query: name=value pairs joined by &).
azurite_request() {
  local method=$1 path=$2 query=$3 date version=2021-08-06 hexkey params sig
  date=$(LC_ALL=C date -u '+%a, %d %b %Y %H:%M:%S GMT')
  hexkey=$(printf %s "$AZ_KEY" | openssl base64 -d -A | od -An -tx1 | tr -d ' \n')
  local kv
  params=""
  for kv in $(printf %s "$query" | tr '&' '\n' | sort); do params+=$'\n'"${kv/=/:}"; done
  sig=$(printf '%s\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:%s\nx-ms-version:%s\n/%s/%s/%s%s' \
    "$method" "$date" "$version" "$AZ_ACCOUNT" "$AZ_ACCOUNT" "$path" "$params" |
    openssl dgst -sha256 -mac HMAC -macopt "hexkey:$hexkey" -binary | openssl base64 -A)
  curl -sf -X "$method" -H "x-ms-date: $date" -H "x-ms-version: $version" -H "Content-Length: 0" \
    -H "Authorization: SharedKey $AZ_ACCOUNT:$sig" "http://127.0.0.1:$AZ_PORT/$AZ_ACCOUNT/$path?$query"
}

# azurite_start: Azurite's Blob service (on disk under $WORK) on a free port
# (AZ_PORT, AZ_PID), with the container AZ_CONTAINER.
azurite_start() {
  local i
  AZ_PORT=$(free_port)
  mkdir -p "$WORK/azurite"
  "$AZURITE_BLOB" --blobHost 127.0.0.1 --blobPort "$AZ_PORT" --location "$WORK/azurite" --silent \
    --skipApiVersionCheck >"$WORK/azurite.log" 2>&1 &
  AZ_PID=$!
  for ((i = 0; ; i++)); do
    azurite_request PUT "$AZ_CONTAINER" restype=container >/dev/null 2>&1 && break
    kill -0 "$AZ_PID" 2>/dev/null || { cat "$WORK/azurite.log" >&2; die "azurite-blob exited"; }
    ((i < 200)) || die "azurite-blob does not answer on port $AZ_PORT"
    sleep 0.1
  done
}

azurite_stop() {
  kill "$AZ_PID"
  wait "$AZ_PID" 2>/dev/null || true
  AZ_PID=""
  rm -rf "$WORK/azurite"
}

# s3_stop: stops s3s-fs and removes its data.
s3_stop() {
  kill "$S3_PID"
  wait "$S3_PID" 2>/dev/null || true
  S3_PID=""
  rm -rf "$S3_ROOT"
}

# cairn_env <storage-url> [VAR=value]...: exactly these settings for the next calls.
cairn_env() {
  unset "${!CAIRN_@}" AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AZURE_STORAGE_KEY
  export CAIRN_LOG_LEVEL=warn CAIRN_STORAGE=$1
  shift
  if [[ $CAIRN_STORAGE == az://* ]]; then
    export CAIRN_AZURE_ENDPOINT=http://127.0.0.1:$AZ_PORT/$AZ_ACCOUNT AZURE_STORAGE_KEY=$AZ_KEY
  fi
  if [[ $CAIRN_STORAGE == s3://* ]]; then
    # The moto bucket is on moto's port, every other one on s3s-fs's.
    local port=$S3_PORT
    [[ $CAIRN_STORAGE != "s3://$MOTO_BUCKET/"* ]] || port=$MOTO_PORT
    export CAIRN_S3_ENDPOINT=http://127.0.0.1:$port CAIRN_S3_REGION=us-east-1 CAIRN_S3_FORCE_PATH_STYLE=true
    export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
  fi
  local kv
  for kv in "$@"; do export "${kv?}"; done
}

# make_age_key: a key pair for the encrypted runs (AGE_KEY, AGE_RECIPIENT).
make_age_key() {
  AGE_KEY=$WORK/age.key
  age-keygen -o "$AGE_KEY" 2>/dev/null
  AGE_RECIPIENT=$(age-keygen -y "$AGE_KEY")
}

# ---------------------------------------------------------------------------
# Timing: each call runs under /usr/bin/time, timed from outside
# ---------------------------------------------------------------------------
CALL_US=0         # wall time of the calls of the current run, microseconds
RSS_FILE=""       # /usr/bin/time appends each call's peak RSS (KiB) and "cpu <user> <sys>" here
STORE_PID=""      # the storage server the current run talks to, if any (its CPU is reported)
STORE_TICKS0=0    # that server's CPU ticks when the run started
RUN_ERR=""        # stderr of the run's calls, appended (detached workers write here too)
RUN_OUT=/dev/null # stdout of the run's calls, appended, if KEEP_STDOUT=1
ROWS=()           # the results table: one row per run, in run order
NOISY_RUNS=()     # the runs whose calls wrote to stderr

# What differs between the benchmarks' runs; a script changes these after sourcing.
KEEP_STDOUT=0                   # 1: keep the calls' stdout in $RUN_OUT (else /dev/null)
SYNC_BEFORE_RUN=0               # 1: `sync` before each run
FAILURE_ENV='CAIRN_|AWS_ACCESS' # name prefixes (ERE) of the variables a failed call's report shows
FAILURE_PG_LOG=0                # 1: that report also shows the end of $WORK/postgres.log

# start_run <id>: new counters and files for the run <id>.
start_run() {
  CALL_US=0 RSS_FILE=$WORK/rss.$1 RUN_ERR=$WORK/stderr.$1 RUN_OUT=/dev/null
  STORE_TICKS0=$(tree_ticks "$STORE_PID")
  : >"$RSS_FILE"
  : >"$RUN_ERR"
  if ((KEEP_STDOUT)); then
    RUN_OUT=$WORK/stdout.$1
    : >"$RUN_OUT"
  fi
  if ((SYNC_BEFORE_RUN)); then sync; fi
}

# run_call <cmd>...: runs one call under /usr/bin/time; only the call itself is timed.
# Any failure stops the benchmark and prints everything needed to reproduce it.
run_call() {
  local t0 t1 rc=0 off
  off=$(stat -c %s "$RUN_ERR")
  t0=${EPOCHREALTIME/./}
  /usr/bin/time -f $'%M\ncpu %U %S' -a -o "$RSS_FILE" "$@" >>"$RUN_OUT" 2>>"$RUN_ERR" || rc=$?
  t1=${EPOCHREALTIME/./}
  CALL_US=$((CALL_US + t1 - t0))
  if ((rc != 0)); then
    {
      echo "$BENCH_NAME: FAILED call (exit code $rc)"
      echo "  cwd:     $PWD"
      echo "  command: $*"
      echo "  env:     $(env | grep -E "^($FAILURE_ENV)" | sort | tr '\n' ' ')"
      echo "  stderr:"
      tail -c "+$((off + 1))" "$RUN_ERR" | sed 's/^/    /'
      if ((FAILURE_PG_LOG)); then
        echo "  last lines of $WORK/postgres.log:"
        tail -n 10 "$WORK/postgres.log" | sed 's/^/    /'
      fi
    } >&2
    exit 1
  fi
}

peak_rss_mib() { awk '/^[0-9]+$/ { if ($1 > m) m = $1 } END { printf "%.1f", m / 1024 }' "$RSS_FILE"; }

# cpu_secs: user + system CPU seconds of the current run's calls (with their children).
cpu_secs() { awk '$1 == "cpu" { s += $2 + $3 } END { printf "%.2f", s }' "$RSS_FILE"; }

# tree_ticks <pid or "">: CPU ticks (user + system) used so far by a process and
# its descendants (a server started through a wrapper); 0 without a pid.
tree_ticks() {
  local pid=$1 t=0 child
  [[ -n $pid && -r /proc/$pid/stat ]] || { echo 0; return; }
  # Fields after the command name, which may hold spaces: utime is the 12th.
  t=$(sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }')
  for child in $(pgrep -P "$pid"); do t=$((t + $(tree_ticks "$child"))); done
  echo "$t"
}

# store_cpu_secs: CPU seconds the current run's storage server used, or "-".
store_cpu_secs() {
  [[ -n $STORE_PID ]] || { echo -; return; }
  awk -v a="$STORE_TICKS0" -v b="$(tree_ticks "$STORE_PID")" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.2f", (b - a) / hz }'
}

# record_row <id> <row>: adds the current run's row to the table. Successful calls
# should be silent at log level warn: keep whatever they said, for the report.
record_row() {
  ROWS+=("$2")
  if [[ -s $RUN_ERR ]]; then
    NOISY_RUNS+=("$1")
    cp "$RUN_ERR" "$WORK/noisy.$1"
  fi
  log "done: $2"
}

# print_noisy_runs: for the report, the start of what each noisy run wrote to stderr.
print_noisy_runs() {
  local id
  for id in "${NOISY_RUNS[@]}"; do
    echo
    echo "stderr of run $id ($(wc -l <"$WORK/noisy.$id") lines; first 10):"
    head -n 10 "$WORK/noisy.$id" | sed 's/^/  /'
  done
}
