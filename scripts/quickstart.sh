#!/usr/bin/env bash
# cairn's main job, end to end, on its embedded default storage (the local
# directory /var/lib/cairn, or $CAIRN_STORAGE if set): a throwaway PostgreSQL
# cluster archives its WAL with `cairn wal-push`; `cairn backup-push` takes a
# base backup; pgbench writes; the data directory is destroyed; `cairn
# backup-fetch LATEST --recovery-target latest` restores it and PostgreSQL
# replays the archive with `cairn wal-fetch`. pg_dumpall before and after must
# be identical. Prints the evidence and the seconds of each step.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/postgres.sh
BIN=$PGBIN
cargo build --release --quiet
CAIRN="$PWD/target/release/cairn"
chmod o+rx "$PWD" "$PWD/target" "$PWD/target/release" 2>/dev/null || true

# PostgreSQL refuses to run as root; cairn runs as the same user as the server.
if [ "$(id -u)" = 0 ]; then AS_PG=(runuser -u postgres --); else AS_PG=(); fi
if [ -z "${CAIRN_STORAGE:-}" ]; then
  mkdir -p /var/lib/cairn 2>/dev/null || { echo "quickstart: create /var/lib/cairn writable by the PostgreSQL user, or set CAIRN_STORAGE"; exit 1; }
  [ "$(id -u)" = 0 ] && chown postgres: /var/lib/cairn
  # An archive holds one cluster's WAL and backups: a second throwaway cluster
  # would (rightly) be refused where the first one's files already are.
  if [ -n "$(ls -A /var/lib/cairn 2>/dev/null)" ]; then
    export CAIRN_STORAGE="file:///var/lib/cairn/quickstart-$(date +%Y%m%d-%H%M%S)"
    echo "quickstart: /var/lib/cairn is in use; using $CAIRN_STORAGE"
  fi
fi
STORAGE=${CAIRN_STORAGE:-file:///var/lib/cairn}

WORK=$(mktemp -d /tmp/cairn-quickstart.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres: "$WORK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres
DATA="$WORK/data"
cleanup() {
  [ -f "$DATA/postmaster.pid" ] && "${AS_PG[@]}" "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
psql() { "$BIN/psql" -XAtq -d postgres "$@"; }
cairn() { "${AS_PG[@]}" env CAIRN_LOG_LEVEL=warn ${CAIRN_STORAGE:+CAIRN_STORAGE=$CAIRN_STORAGE} PGHOST=$PGHOST PGPORT=$PGPORT PGUSER=$PGUSER "$CAIRN" "$@"; }
T0=0
step() { T0=$(date +%s.%N); printf 'quickstart: %-58s' "$1"; }
done_step() { printf '%6.2f s%s\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "${1:+  ($1)}"; }
command -v bc >/dev/null || apt_install bc

step "initdb, archive_command = 'cairn wal-push %p', start"
"${AS_PG[@]}" "$BIN/initdb" -D "$DATA" -A trust -U postgres --no-sync >/dev/null
cat >> "$DATA/postgresql.auto.conf" <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
archive_mode = on
archive_command = '${CAIRN_STORAGE:+CAIRN_STORAGE=$CAIRN_STORAGE }$CAIRN wal-push %p'
CONF
"${AS_PG[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$WORK/server.log" -w start >/dev/null
done_step

step "cairn backup-push"
NAME=$(cairn backup-push "$DATA")
done_step "$NAME"

step "pgbench -i -s 10; pgbench -c 4 -j 2 -t 200"
"$BIN/pgbench" -i -s 10 -q postgres >/dev/null 2>&1
"$BIN/pgbench" -c 4 -j 2 -t 200 postgres >/dev/null 2>&1
done_step

step "pg_dumpall, checkpoint, pg_switch_wal(), wait for the archive"
"$BIN/pg_dumpall" | grep -v '^\\\(un\)\?restrict ' >"$WORK/before.sql"
psql -c checkpoint
LAST=$(psql -c "select pg_walfile_name(pg_current_wal_lsn())")
psql -c "select pg_switch_wal()" >/dev/null
until [ "$(psql -c "select coalesce(last_archived_wal,'') >= '$LAST' from pg_stat_archiver")" = t ]; do sleep 0.2; done
ARCHIVED=$(psql -c "select archived_count || ' archived, ' || failed_count || ' failed' from pg_stat_archiver")
done_step "WAL files: $ARCHIVED"

step "stop PostgreSQL, delete the data directory"
"${AS_PG[@]}" "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
rm -rf "$DATA"
done_step

step "cairn backup-fetch LATEST --recovery-target latest"
cairn backup-fetch "$DATA" LATEST --recovery-target latest >/dev/null
done_step

step "start, replay the archive with cairn wal-fetch"
"${AS_PG[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$WORK/restored.log" -w start >/dev/null
until [ "$(psql -c 'select pg_is_in_recovery()' 2>/dev/null)" = f ]; do sleep 0.2; done
done_step

"$BIN/pg_dumpall" | grep -v '^\\\(un\)\?restrict ' >"$WORK/after.sql"
echo
echo "storage:  $STORAGE"
cairn backup-list
cairn backup-list --json >"$WORK/list.json"
python3 - "$WORK/list.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))[-1]
print(f"backup {m['name']}: LSN {m['start_lsn']} .. {m['stop_lsn']} on timeline {m['timeline']}, "
      f"{len(m['files'])} files, {m['raw_size']} bytes raw, {m['stored_size']} stored "
      f"({m['compression']}), {len(m['parts'])} parts")
PY
echo "restored: $(grep -c 'restored log file' "$WORK/restored.log") WAL files replayed from the archive"
if diff -q "$WORK/before.sql" "$WORK/after.sql" >/dev/null; then
  echo "pg_dumpall diff: empty ($(wc -l <"$WORK/before.sql") lines) -- quickstart: OK"
else
  diff "$WORK/before.sql" "$WORK/after.sql" | head -20
  echo "quickstart: MISMATCH"
  exit 1
fi
