#!/usr/bin/env bash
# Runs cairn's whole test suite on a fresh machine. Installs what the tests need
# when it is missing: PostgreSQL server binaries (Debian packages), the s3s-fs S3
# server (crates.io) and the GCS emulator (PyPI), cached in $TEST_TOOLS_DIR
# (default ~/.cache/cairn-test-tools) between runs. Builds once, in release mode,
# and runs every test against those real servers.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${TEST_TOOLS_DIR:-$HOME/.cache/cairn-test-tools}"
export TEST_TOOLS_DIR="$TOOLS"
mkdir -p "$TOOLS"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# PostgreSQL server binaries (initdb, pg_ctl, pgbench, pg_dumpall, pg_basebackup).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "test.sh: installing PostgreSQL server binaries"
  apt_install postgresql-15 || apt_install postgresql
fi
# PostgreSQL refuses to run as root: the tests run it as this user.
id postgres >/dev/null 2>&1 || as_root useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
command -v runuser >/dev/null || apt_install util-linux

# S3: s3s-fs checks signatures and checksums. 0.14.1 is the last that builds on
# this toolchain.
if [ ! -x "$TOOLS/bin/s3s-fs" ]; then
  echo "test.sh: installing s3s-fs"
  cargo install --quiet --root "$TOOLS" s3s-fs@0.14.1 --features binary
fi

# GCS: gcp-storage-emulator, in its own virtualenv.
if [ ! -x "$TOOLS/gcs-venv/bin/gcp-storage-emulator" ]; then
  echo "test.sh: installing gcp-storage-emulator"
  python3 -m venv "$TOOLS/gcs-venv"
  "$TOOLS/gcs-venv/bin/pip" install --quiet gcp-storage-emulator
fi

# Build once (release: the integration tests run the real binary many times).
cargo build --release --all-targets --locked
# The data directories the tests create belong to postgres and must be able to
# reach the cairn binary.
chmod o+rx "$PWD" "$PWD/target" "$PWD/target/release" 2>/dev/null || true
cargo test --release --locked --no-fail-fast -- --test-threads "${TEST_THREADS:-2}"
