# Sourced by scripts/*.sh: makes sure PostgreSQL server binaries and a `postgres`
# user exist (PostgreSQL refuses to run as root), installing Debian packages when
# they are missing, and sets PGBIN to the newest server's bin directory.

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "$(basename "$0"): installing PostgreSQL server binaries"
  apt_install postgresql-15 || apt_install postgresql
fi
id postgres >/dev/null 2>&1 || as_root useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
command -v runuser >/dev/null || apt_install util-linux
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
export PGBIN
