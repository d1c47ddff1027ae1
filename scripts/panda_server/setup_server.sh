#!/usr/bin/env bash
# The real PanDA server (PyPI panda-server) under Apache + mod_wsgi, over HTTPS on 127.0.0.1 (run as root).
#
#   setup_server.sh STATE_DIR [HTTPS_PORT] [DB_PORT]
#
# Needs the database of setup_db.sh (same STATE_DIR) and Debian apache2 + apache2-dev.
# - panda-server is pip-installed into a venv owned by a non-root user (pandasrv): its
#   build hook looks up the 'atlpan' account when run as root;
# - a private CA signs the server's certificate and one client certificate, whose DN is
#   the server's production_dns: what makes a pilot "secure" with the production role;
#   STATE_DIR/pki/client-proxy.pem is that cert + key, usable as X509_USER_PROXY;
# - the Apache config is our own (ServerRoot STATE_DIR/apache), run in the foreground by
#   run_all.py, not the system service.
set -euo pipefail
state=$(mkdir -p "$1" && cd "$1" && pwd)
port=${2:-25443}
db_port=${3:-54329}
user=pandasrv
export DEBIAN_FRONTEND=noninteractive
for p in apache2 apache2-dev postgresql-15-cron postgresql-15-partman openssl; do
  dpkg -s "$p" >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q --no-install-recommends "$p"; }
done
id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
venv=$state/venv
mkdir -p "$state"
chown "$user" "$state"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import pandaserver, mod_wsgi" 2>/dev/null; then
  runuser -u "$user" -- /usr/bin/python3 -m venv "$venv"
  runuser -u "$user" -- "$venv/bin/pip" install -q 'panda-server[postgres]' mod_wsgi
fi
purelib=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

# -- PKI: a CA, the server (localhost), one client whose DN is a production DN -------------
pki=$state/pki
mkdir -p "$pki"
if [ ! -f "$pki/ca.pem" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=compass-pilot test CA" \
    -keyout "$pki/ca.key" -out "$pki/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$pki/server.key" -out "$pki/server.csr" 2>/dev/null
  printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" > "$pki/server.ext"
  openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial -days 7 \
    -extfile "$pki/server.ext" -out "$pki/server.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/DC=ch/DC=cern/OU=Users/CN=compasspilot" \
    -keyout "$pki/client.key" -out "$pki/client.csr" 2>/dev/null
  openssl x509 -req -in "$pki/client.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial -days 7 \
    -out "$pki/client.pem" 2>/dev/null
  cat "$pki/client.pem" "$pki/client.key" > "$pki/client-proxy.pem"
  chmod 600 "$pki"/*.key "$pki/client-proxy.pem"
fi

# -- panda_server.cfg / panda_common.cfg ----------------------------------------------------
etc=$state/etc/panda
logs=$state/log
mkdir -p "$etc" "$logs/pandacache" "$state/run"
chown -R "$user" "$logs" "$state/run"
# the package's own templates, with our values: every key the server reads without a default stays present
"$venv/bin/python" - "$venv" "$purelib" "$etc" "$logs" "$state" "$port" "$db_port" "${PANDA_DB_PASSWORD:-panda-local}" <<'PY'
import configparser, sys
venv, purelib, etc, logs, state, port, db_port, password = sys.argv[1:]
def load(name):
    text = open(f"{venv}/etc/panda/{name}.rpmnew").read()
    text = text.replace("@@virtual_env@@", venv).replace("@@install_purelib@@", purelib)
    cfg = configparser.RawConfigParser(interpolation=None)
    cfg.optionxform = str
    cfg.read_string(text)
    return cfg
common = load("panda_common.cfg")
common["logger"]["logdir"] = logs
common["logger"]["log_level"] = "DEBUG"  # the Adder says nEventsMap=… at DEBUG
server = load("panda_server.cfg")
s = server["server"]
s.update({
    "backend": "postgres", "logdir": logs, "cache_dir": f"{logs}/pandacache", "home_dir_cwd": state,
    "dbhost": "127.0.0.1", "dbport": db_port, "dbuser": "panda", "dbpasswd": password, "dbname": "panda_db",
    "pserverhost": "localhost", "pserverport": port, "pserverporthttp": port, "pserverportcache": port,
    "pserveralias": "localhost", "keyDir": f"{state}/keys", "token_authType": "None",
    "auth_config": f"{etc}/auth/", "production_dns": "/DC=ch/DC=cern/OU=Users/CN=compasspilot",
    "adder_plugins": "any:pandaserver.dataservice.adder_dummy_plugin:AdderDummyPlugin",
    "setupper_plugins": "any:pandaserver.dataservice.setupper_dummy_plugin:SetupperDummyPlugin",
})
if server.has_section("daemon"):
    server["daemon"]["enable"] = "False"
for name, cfg in (("panda_common.cfg", common), ("panda_server.cfg", server)):
    with open(f"{etc}/{name}", "w") as out:
        cfg.write(out)
PY

# -- Apache ---------------------------------------------------------------------------------
ap=$state/apache
mkdir -p "$ap"
wsgi_so=$("$venv/bin/mod_wsgi-express" module-location)
mods=/usr/lib/apache2/modules
cat > "$ap/httpd.conf" <<CONF
ServerRoot "$ap"
PidFile $ap/httpd.pid
ErrorLog $logs/apache_error.log
LogLevel warn
LoadModule mpm_event_module $mods/mod_mpm_event.so
LoadModule authz_core_module $mods/mod_authz_core.so
LoadModule mime_module $mods/mod_mime.so
LoadModule env_module $mods/mod_env.so
LoadModule ssl_module $mods/mod_ssl.so
LoadModule socache_shmcb_module $mods/mod_socache_shmcb.so
LoadModule wsgi_module $wsgi_so
User $user
Group $user
ServerName localhost
Listen 127.0.0.1:$port
TypesConfig /etc/mime.types
SSLSessionCache shmcb:$ap/ssl_scache(512000)
WSGISocketPrefix $state/run/wsgi
WSGIPythonHome $venv
WSGIDaemonProcess pandasrv processes=2 threads=4 home=$state python-home=$venv
WSGIProcessGroup pandasrv
WSGIApplicationGroup %{GLOBAL}
WSGIPassAuthorization On
<VirtualHost 127.0.0.1:$port>
  SSLEngine on
  SSLCertificateFile $pki/server.pem
  SSLCertificateKeyFile $pki/server.key
  SSLCACertificateFile $pki/ca.pem
  SSLVerifyClient optional
  SSLVerifyDepth 5
  SSLOptions +StdEnvVars +LegacyDNStringFormat +ExportCertData
  WSGIScriptAliasMatch ^(/server/panda/.+)|(/api/.+)$ $purelib/pandaserver/server/panda.py
  <Directory $purelib/pandaserver/server>
    Require all granted
  </Directory>
</VirtualHost>
CONF
chmod o+rx "$state" "$pki"
chmod o+r "$pki/ca.pem"
echo "state=$state venv=$venv purelib=$purelib"
echo "start: PANDA_HOME=$state PANDA_BEHIND_REAL_LB=1 PANDACACHE_URL=https://localhost:$port/cache apache2 -f $ap/httpd.conf -DFOREGROUND"
