#!/usr/bin/env bash
# A PostgreSQL 15 cluster with PanDA's schema, for the real PanDA server (run as root).
#
#   setup_db.sh SCHEMA_DIR STATE_DIR [PORT]
#
# SCHEMA_DIR is PanDAWMS/panda-database's schema/postgres (fetched by the developer, never
# committed).  The cluster lives in STATE_DIR/pgdata, owned by the postgres user, listening on
# 127.0.0.1:PORT (default 54329) only.  pg_cron and pg_partman are preloaded as the schema
# needs; Debian's partman is 4.7, whose create_parent knows p_type 'native', not 'range'
# (partman 5), so the partition script is loaded with that one word changed.  The steps are
# the ones of the repository's panda_db_init.sh, without its Docker paths.
set -euo pipefail
schema=$(cd "$1" && pwd)/sqls
state=$2
port=${3:-54329}
bin=/usr/lib/postgresql/15/bin
password=${PANDA_DB_PASSWORD:-panda-local}
db=$state/db
mkdir -p "$db"
chmod 755 "$state"
chown postgres "$db"
if [ ! -f "$db/pgdata/PG_VERSION" ]; then
  runuser -u postgres -- "$bin/initdb" -A trust -U postgres -D "$db/pgdata" >/dev/null
fi
"$(dirname "$0")/start_db.sh" "$state" "$port"
psql=(psql -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 -q)
lenient=(psql -h 127.0.0.1 -p "$port" -U postgres -q)  # the component files load as upstream does: errors logged, not fatal
if "${psql[@]}" -d panda_db -tc "SELECT 1 FROM doma_panda.pandadb_version" >/dev/null 2>&1; then
  echo "panda_db already loaded"; exit 0
fi
sed "s/\${PANDA_DB_PASSWORD}/$password/g" "$schema/init_step.sql" | "${psql[@]}" -d postgres -f -
for comp in PANDA PANDAMETA PANDAARCH PANDABIGMON DEFT PARTITION; do
  for sub in "" _TABLE _VIEW _TYPE _SEQUENCE _FUNCTION _TRIGGER _SCHEDULER_JOBS _PROCEDURE; do
    file="$schema/pg_${comp}${sub}.sql"
    [ -f "$file" ] || continue
    if [ "$comp" = PARTITION ]; then
      sed "s/p_type => 'range'/p_type => 'native'/" "$file" | "${lenient[@]}" -d panda_db -f - >/dev/null ||
        echo "warning: $file: errors (as upstream, not fatal)"
    else
      # some files set ON_ERROR_STOP themselves (psql exits 3): upstream goes on, so do we
      "${lenient[@]}" -d panda_db -f "$file" >/dev/null || echo "warning: $file: errors (as upstream, not fatal)"
    fi
  done
done
IFS=. read -r major minor patch < "$schema/../version" || true  # no newline at its end
"${psql[@]}" -d panda_db -c "INSERT INTO doma_panda.pandadb_version (component, major, minor, patch) VALUES ('PanDA', '$major', '$minor', '$patch')"
"${psql[@]}" -d panda_db -f "$schema/post_step_panda.sql" >/dev/null
"${psql[@]}" -d postgres -f "$schema/post_step_cron.sql" >/dev/null
echo "panda_db $major.$minor.$patch loaded on 127.0.0.1:$port"
