#!/bin/sh
# Install Debian's PostgreSQL server for the tests when no initdb is found (CI runs as root).
# The tests start their own server in a temporary directory; the packaged cluster is not used.
set -eu
for initdb in /usr/lib/postgresql/*/bin/initdb; do
    if [ -x "$initdb" ]; then
        exit 0
    fi
done
if [ "$(id -u)" -ne 0 ]; then
    # Not fatal: the PostgreSQL tests then skip, saying why.
    echo "PostgreSQL is not installed and this is not root: apt-get install -y postgresql" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq postgresql >/dev/null
# The package may start its own cluster; the tests do not need it.
if command -v pg_ctlcluster >/dev/null 2>&1; then
    for conf in /etc/postgresql/*/main; do
        [ -d "$conf" ] || continue
        version=$(basename "$(dirname "$conf")")
        pg_ctlcluster "$version" main stop >/dev/null 2>&1 || true
    done
fi
