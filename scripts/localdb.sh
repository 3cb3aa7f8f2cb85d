#!/usr/bin/env bash
# A local PostgreSQL cluster under ./.data/pg for `make run` when no database URL is configured.
#   scripts/localdb.sh start   start (or reuse) it; prints its URL on stdout, messages on stderr
#   scripts/localdb.sh stop    stop it
#   scripts/localdb.sh status
# It uses this machine's PostgreSQL binaries and preloads TimescaleDB when it is installed.
set -euo pipefail

cmd=${1:-start}
root=$(cd "$(dirname "$0")/.." && pwd)
data="${QRYPTIFY_LOCALDB_DIR:-$root/.data/pg}"
port=${QRYPTIFY_LOCALDB_PORT:-54329}
bindir=${PG_BINDIR:-}
if [ -z "$bindir" ]; then
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/pg_ctl" ] && bindir=$d; done
fi
if [ -z "$bindir" ] && command -v pg_ctl >/dev/null 2>&1; then bindir=$(dirname "$(command -v pg_ctl)"); fi

say() { printf '%s\n' "$*" >&2; }

if [ -z "$bindir" ] || [ ! -x "$bindir/pg_ctl" ]; then
  say "No database configured and no PostgreSQL server binaries found on this machine."
  say "Either set database_url in config.yaml (or QRYPTIFY_DATABASE_URL), or start TimescaleDB with:"
  say "    docker compose up -d"
  say "and run again with QRYPTIFY_DATABASE_URL=postgresql://postgres:postgres@localhost:5432/qryptify"
  exit 2
fi

# PostgreSQL refuses to run as root: run it as the postgres user then.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

url="postgresql://postgres@127.0.0.1:$port/qryptify"

case "$cmd" in
  start)
    if [ ! -s "$data/PG_VERSION" ]; then
      say "Creating a local PostgreSQL cluster in $data ..."
      mkdir -p "$data"
      [ "$(id -u)" = 0 ] && chown -R postgres: "$(dirname "$data")"
      chmod 700 "$data"
      as_pg "$bindir/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
      {
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $port"
        echo "unix_socket_directories = '$data'"
        libdir=$("$bindir/pg_config" --pkglibdir 2>/dev/null || echo "$bindir/../lib")
        if [ -e "$libdir/timescaledb.so" ]; then
          echo "shared_preload_libraries = 'timescaledb'"
          echo "timescaledb.telemetry_level = off"
        fi
      } | as_pg tee -a "$data/postgresql.conf" >/dev/null
    fi
    if ! as_pg "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
      as_pg "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w start >/dev/null
      say "Started the local PostgreSQL cluster in $data (port $port)."
    else
      say "Reusing the local PostgreSQL cluster in $data (port $port)."
    fi
    if ! as_pg "$bindir/psql" -h "$data" -p "$port" -U postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'qryptify'" postgres | grep -q 1; then
      as_pg "$bindir/createdb" -h "$data" -p "$port" -U postgres qryptify
    fi
    say "Database: $url   (stop it with: make db-stop)"
    echo "$url"
    ;;
  stop)
    if [ -s "$data/PG_VERSION" ] && as_pg "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
      as_pg "$bindir/pg_ctl" -D "$data" -m fast -w stop >/dev/null
      say "Stopped the local PostgreSQL cluster in $data."
    else
      say "The local PostgreSQL cluster is not running."
    fi
    ;;
  status)
    as_pg "$bindir/pg_ctl" -D "$data" status >&2 || true
    echo "$url"
    ;;
  *) say "usage: $0 start|stop|status"; exit 2 ;;
esac
