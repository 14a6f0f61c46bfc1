#!/usr/bin/env bash
# Makes sure the local PostgreSQL and MariaDB servers run and accept connections, for the
# kluis-store tests and bench. Starts a server only if it does not answer; never stops one.
# Prints the export lines on its last lines (the defaults the tests use anyway):
#   export KLUIS_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test
#   export KLUIS_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/test
#
#   eval "$(bash scripts/start-databases.sh)"
#
# Exits non-zero (after saying which) if a server cannot be started within 60 seconds.
# Override the targets with KLUIS_TEST_POSTGRES_URL / KLUIS_TEST_MYSQL_URL if they are elsewhere;
# then this script only waits for them.
set -euo pipefail

pg_url="${KLUIS_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
my_url="${KLUIS_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}"

pg_up() { pg_isready -q -d "$pg_url" >/dev/null 2>&1; }
my_up() {
  local hp host port
  hp="${my_url#*://}"; hp="${hp%%/*}"; hp="${hp##*@}"
  host="${hp%%:*}"; port="${hp##*:}"; [ "$port" = "$hp" ] && port=3306
  mysqladmin --connect-timeout=2 -h "$host" -P "$port" -u root ping >/dev/null 2>&1
}

wait_for() { # name check
  local i
  for i in $(seq 1 60); do
    if "$2"; then echo "$1: accepting connections" >&2; return 0; fi
    sleep 1
  done
  echo "$1: not accepting connections after 60 s" >&2
  return 1
}

status=0
if ! pg_up; then
  if [ -z "${KLUIS_TEST_POSTGRES_URL:-}" ] && command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "postgres: not answering; starting the local cluster" >&2
    for v in $(ls /etc/postgresql 2>/dev/null); do
      pg_ctlcluster --skip-systemctl-redirect "$v" main start >&2 || true
    done
  fi
  wait_for postgres pg_up || status=1
else
  echo "postgres: accepting connections" >&2
fi

if ! my_up; then
  if [ -z "${KLUIS_TEST_MYSQL_URL:-}" ] && [ -x /usr/sbin/mariadbd ]; then
    echo "mariadb: not answering; starting mariadbd" >&2
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd >&2 || true
  fi
  wait_for mariadb my_up || status=1
else
  echo "mariadb: accepting connections" >&2
fi

echo "export KLUIS_TEST_POSTGRES_URL=$pg_url"
echo "export KLUIS_TEST_MYSQL_URL=$my_url"
exit "$status"
