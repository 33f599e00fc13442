#!/usr/bin/env bash
# Many small databases (CouchDB's per-user database pattern): N databases of D documents
# each on a pouchdb-server started here (in memory), then `cairn backup couchdb --all-dbs`
# three times under /usr/bin/time: the first backup, a second with nothing changed, and a
# third after K databases changed. Prints one Markdown table (wall, CPU, peak RSS, requests,
# bytes received and stored) and writes WORK/many-dbs.md.
#
# Usage: benches/couch/many-dbs.sh [--dbs N] [--docs D] [--changed K] [--cairn BIN] [--work DIR]
#                                   [--couchdb3]
#   --dbs N      databases [default: 2000]
#   --docs D     documents in each [default: 5]
#   --changed K  databases changed before the third backup [default: 20]
#   --cairn BIN  the cairn binary [default: target/release/cairn]
#   --work DIR   scratch directory, wiped first [default: .ci/many-dbs]
#   --couchdb3   talk to pouchdb-server through the test suite's CouchDB 3 emulation
#                (one node: `_dbs_info`, opaque sequences, `_local_docs`), built
#                as `cargo build --release -p cairn-cli --example couch3_proxy`
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DBS=2000 DOCS=5 CHANGED=20 CAIRN=$ROOT/target/release/cairn WORK=$ROOT/.ci/many-dbs COUCH3=0
while (($#)); do
  case $1 in
    --dbs) DBS=$2; shift 2 ;;
    --docs) DOCS=$2; shift 2 ;;
    --changed) CHANGED=$2; shift 2 ;;
    --cairn) CAIRN=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --couchdb3) COUCH3=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "many-dbs.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -x $CAIRN ]] || { echo "many-dbs.sh: no cairn at $CAIRN (cargo build --release -p cairn-cli)" >&2; exit 1; }

cd "$ROOT"
# shellcheck source=../../tests/services.sh
source tests/services.sh
start_pouchdb
URL=$CAIRN_TEST_COUCH
rm -rf "$WORK"; mkdir -p "$WORK"
SERVER="pouchdb-server, in memory"
if ((COUCH3)); then
  cargo build --quiet --release -p cairn-cli --example couch3_proxy
  PROXY=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/couch3_proxy
  UP=${URL##*@}
  "$PROXY" "$UP" --single-node >"$WORK/proxy.port" &
  CLEANUPS+=("kill $! 2>/dev/null")
  for _ in $(seq 100); do [[ -s $WORK/proxy.port ]] && break; sleep 0.1; done
  URL=${URL%:*}:$(head -1 "$WORK/proxy.port")
  SERVER="pouchdb-server, in memory, through the CouchDB 3 emulation of one node"
fi
export XDG_CACHE_HOME=$WORK/cache XDG_CONFIG_HOME=$WORK/cache

# The databases, eight requests at a time.
python3 - "$URL" "$DBS" "$DOCS" <<'PY'
import base64, json, sys, urllib.request, urllib.parse
from concurrent.futures import ThreadPoolExecutor
url, dbs, docs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
u = urllib.parse.urlsplit(url)
auth = "Basic " + base64.b64encode(f"{u.username}:{u.password}".encode()).decode()
base = f"{u.scheme}://{u.hostname}:{u.port}"
def req(method, path, body=None):
    r = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                               headers={"Authorization": auth, "Content-Type": "application/json"})
    with urllib.request.urlopen(r) as resp:
        return resp.read()
def make(i):
    db = f"userdb-{i:06x}"
    req("PUT", f"/{db}")
    req("POST", f"/{db}/_bulk_docs", {"docs": [{"_id": f"pref-{k}", "user": i, "k": k, "theme": "dark", "notes": "x" * 200} for k in range(docs)]})
with ThreadPoolExecutor(8) as pool:
    list(pool.map(make, range(dbs)))
print(f"created {dbs} databases of {docs} documents")
PY

"$CAIRN" key generate --output "$WORK/key" >/dev/null 2>&1
"$CAIRN" init --repo "$WORK/repo" >/dev/null 2>&1
run() {  # NAME
  /usr/bin/time -f '%e %U %S %M' -o "$WORK/$1.time" \
    "$CAIRN" backup couchdb --repo "$WORK/repo" --key "$WORK/key" --url "$URL" --all-dbs --json \
    >"$WORK/$1.json" 2>"$WORK/$1.err" || { cat "$WORK/$1.err" >&2; exit 1; }
}
run first
run unchanged
python3 - "$URL" "$CHANGED" <<'PY'
import base64, json, sys, urllib.request, urllib.parse
url, changed = sys.argv[1], int(sys.argv[2])
u = urllib.parse.urlsplit(url)
auth = "Basic " + base64.b64encode(f"{u.username}:{u.password}".encode()).decode()
base = f"{u.scheme}://{u.hostname}:{u.port}"
for i in range(changed):
    r = urllib.request.Request(f"{base}/userdb-{i:06x}/_bulk_docs", method="POST",
                               data=json.dumps({"docs": [{"_id": f"new-{i}", "v": 1}]}).encode(),
                               headers={"Authorization": auth, "Content-Type": "application/json"})
    urllib.request.urlopen(r).read()
PY
run changed

python3 - "$WORK" "$DBS" "$DOCS" "$CHANGED" "$SERVER" <<'PY' | tee "$WORK/many-dbs.md"
import json, sys
work, dbs, docs, changed, server = sys.argv[1:6]
print(f"{dbs} databases of {docs} documents ({server}); the third backup after {changed} changed.\n")
print("| backup | wall s | CPU s | peak RSS MB | requests | received MB | stored MB |")
print("|---|---:|---:|---:|---:|---:|---:|")
rows = {}
for name in ["first", "unchanged", "changed"]:
    wall, user, sys_, rss = open(f"{work}/{name}.time").read().split()[-4:]
    s = json.load(open(f"{work}/{name}.json"))
    rows[name] = float(wall)
    print(f"| {name} | {float(wall):.2f} | {float(user) + float(sys_):.2f} | {int(rss) / 1024:.1f} | "
          f"{s['requests']} | {s['bytes_received'] / 1e6:.2f} | {s['stored_bytes'] / 1e6:.2f} |")
print(f"\nunchanged / first (wall): {rows['unchanged'] / rows['first']:.2f}")
PY
