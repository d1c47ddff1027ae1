#!/usr/bin/env bash
# Start (or stop) the PostgreSQL cluster setup_db.sh made in STATE_DIR (run as root).
#
#   start_db.sh STATE_DIR [PORT] [stop]
#
# One place for the server's options (port, loopback only, pg_cron + pg_partman preloaded):
# setup_db.sh starts the cluster through it, scripts/run_peers.py starts and stops it.
set -euo pipefail
db=$1/db
port=${2:-54329}
bin=/usr/lib/postgresql/15/bin
if [ "${3:-start}" = stop ]; then
  runuser -u postgres -- "$bin/pg_ctl" -D "$db/pgdata" -w stop >/dev/null
  exit 0
fi
runuser -u postgres -- "$bin/pg_ctl" -D "$db/pgdata" status >/dev/null ||
  runuser -u postgres -- "$bin/pg_ctl" -w -l "$db/postgres.log" -D "$db/pgdata" \
  -o "-p $port -c listen_addresses=127.0.0.1 -k $db -c shared_preload_libraries=pg_cron,pg_partman_bgw -c cron.database_name=postgres" start
