#!/usr/bin/env bash
# cairn's main job on its embedded default storage (the local directory
# /var/lib/cairn, or $CAIRN_STORAGE if set): a throwaway PostgreSQL cluster archives
# its WAL with `cairn wal-push`, then a base backup taken before the writes is
# recovered with `cairn wal-fetch`, and the rows are counted on both sides.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/postgres.sh
BIN=$PGBIN
cargo build --release --quiet
CAIRN="$PWD/target/release/cairn"
chmod o+rx "$PWD" "$PWD/target" "$PWD/target/release" 2>/dev/null || true

# PostgreSQL refuses to run as root.
if [ "$(id -u)" = 0 ]; then PG=(runuser -u postgres --); else PG=(); fi
if [ -z "${CAIRN_STORAGE:-}" ]; then
  mkdir -p /var/lib/cairn 2>/dev/null || { echo "quickstart: create /var/lib/cairn writable by the PostgreSQL user, or set CAIRN_STORAGE"; exit 1; }
  [ "$(id -u)" = 0 ] && chown postgres: /var/lib/cairn
  # An archive holds one cluster's WAL: a second throwaway cluster would (rightly)
  # be refused where the first one's files already are.
  if [ -n "$(ls -A /var/lib/cairn/wal 2>/dev/null)" ]; then
    export CAIRN_STORAGE="file:///var/lib/cairn/quickstart-$(date +%Y%m%d-%H%M%S)"
    echo "quickstart: /var/lib/cairn already holds an archive; using $CAIRN_STORAGE"
  fi
fi

WORK=$(mktemp -d /tmp/cairn-quickstart.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres: "$WORK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
  for d in "$WORK/primary" "$WORK/restored"; do
    [ -f "$d/postmaster.pid" ] && "${PG[@]}" "$BIN/pg_ctl" -D "$d" -m fast -w stop >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
psql() { "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -XAtq -d postgres "$@"; }

"${PG[@]}" "$BIN/initdb" -D "$WORK/primary" -A trust -U postgres --no-sync >/dev/null
cat >> "$WORK/primary/postgresql.auto.conf" <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
archive_mode = on
archive_command = '$CAIRN wal-push %p'
restore_command = '$CAIRN wal-fetch %f %p'
CONF
"${PG[@]}" "$BIN/pg_ctl" -D "$WORK/primary" -l "$WORK/primary.log" -w start >/dev/null
PGOPTIONS='-c client_min_messages=warning' "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PORT" -U postgres -D "$WORK/restored" -X none -c fast --no-sync
[ "$(id -u)" = 0 ] && chown -R postgres: "$WORK/restored"

echo "quickstart: writing rows and archiving WAL to ${CAIRN_STORAGE:-file:///var/lib/cairn}"
psql -c "create table demo as select g, md5(g::text) from generate_series(1, 100000) g"
LAST=$(psql -c "select pg_walfile_name(pg_current_wal_lsn())")
psql -c "select pg_switch_wal()" >/dev/null
until [ "$(psql -c "select coalesce(last_archived_wal,'') >= '$LAST' from pg_stat_archiver")" = t ]; do sleep 0.2; done
BEFORE=$(psql -c "select count(*) from demo")
psql -c "select 'archived: ' || archived_count || ', failed: ' || failed_count from pg_stat_archiver"
"${PG[@]}" "$BIN/pg_ctl" -D "$WORK/primary" -m fast -w stop >/dev/null

echo "quickstart: recovering the base backup from the archive"
touch "$WORK/restored/recovery.signal"
"${PG[@]}" "$BIN/pg_ctl" -D "$WORK/restored" -l "$WORK/restored.log" -w start >/dev/null
until [ "$(psql -c 'select pg_is_in_recovery()')" = f ]; do sleep 0.2; done
AFTER=$(psql -c "select count(*) from demo")
echo "quickstart: rows before: $BEFORE, after recovery: $AFTER"
[ "$BEFORE" = "$AFTER" ] && echo "quickstart: OK" || { echo "quickstart: MISMATCH"; exit 1; }
