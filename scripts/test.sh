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

# PostgreSQL server binaries (initdb, pg_ctl, pgbench, pg_dumpall, pg_basebackup)
# and the postgres user the tests run them as.
. scripts/lib/postgres.sh

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
