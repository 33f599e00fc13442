#!/usr/bin/env bash
# CouchDB backup/restore benchmark: Cairn vs @cloudant/couchbackup 2.11.12 (couchbackup /
# couchrestore) on one pouchdb-server 4.2.0 with the same data, plus the server's own ingest
# and read limits. See benches/couch/README.md.
#
# Usage: benches/couch/run.sh [--only all|peer|cairn] [--docs N] [--days N] [--storage dir|memory]
#                             [--work DIR] [--cairn BIN] [--no-limits] [--zstd19 all|last|none]
#                             [--results FILE] [--pin] [--pairs N]
#   --only peer    couchbackup/couchrestore and the server limits only (no Cairn)
#   --only cairn   Cairn only (no couchbackup, no limits)
#   --docs N       documents in the initial load [default: $DOCS or 100000]
#   --days N       days of churn, each followed by the backups [default: 7]
#   --storage S    pouchdb-server storage: dir = LevelDB on disk (--dir), memory = --in-memory [dir]
#   --work DIR     scratch directory, wiped first [default: .ci/couch-bench/work]
#   --cairn BIN    the cairn binary [default: $CARGO_TARGET_DIR or target/release/cairn]
#   --no-limits    skip the server ingest/read limit measurements
#   --pairs N      at the end, N times (default 3): the server's read and ingest limits
#                  (1 in flight, 500 per request) beside a first Cairn backup of the
#                  last day's database into a new repository and its restore, in turns;
#                  the report gives each pair's ratios and their median (0: skip)
#   --zstd19 M     the zstd -19 column: all = every file (slow: ~1-2 MB/s here, 20+ min at
#                  100,000 docs), last = the last day's file, its ratio applied to the raw
#                  total of all days (an estimate, marked so), none [default: last]
#   --results F    the Markdown results file [default: benches/couch/results-YYYY-MM-DD.md]
#   --pin          the server on CPU 0, every client (Cairn, couchbackup/couchrestore, the
#                  limit and load scripts) on CPU 1, as on separate machines: unpinned, the
#                  single-threaded server and a client's bursts share the cores unevenly
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/benches/couch
BENCH=$ROOT/.ci/couch-bench
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
ONLY=all DOCS=${DOCS:-100000} DAYS=7 STORAGE=dir WORK=$BENCH/work CAIRN=$TARGET/release/cairn
LIMITS=1 PAIRS=3 ZSTD19=last RESULTS="" PIN=0
while (($#)); do
  case $1 in
    --only) ONLY=$2; shift 2 ;;
    --docs) DOCS=$2; shift 2 ;;
    --days) DAYS=$2; shift 2 ;;
    --storage) STORAGE=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --cairn) CAIRN=$2; shift 2 ;;
    --no-limits) LIMITS=0; shift ;;
    --pairs) PAIRS=$2; shift 2 ;;
    --zstd19) ZSTD19=$2; shift 2 ;;
    --results) RESULTS=$2; shift 2 ;;
    --pin) PIN=1; shift ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
case $ONLY in all | peer | cairn) ;; *) echo "run.sh: --only all|peer|cairn" >&2; exit 2 ;; esac
case $STORAGE in dir | memory) ;; *) echo "run.sh: --storage dir|memory" >&2; exit 2 ;; esac
case $ZSTD19 in all | last | none) ;; *) echo "run.sh: --zstd19 all|last|none" >&2; exit 2 ;; esac
RESULTS=${RESULTS:-$HERE/results-$(date -u +%F).md}
PEER=0 CAIRN_ON=0
[[ $ONLY == cairn ]] || PEER=1
[[ $ONLY == peer ]] || CAIRN_ON=1
[[ $ONLY != cairn ]] || LIMITS=0

SRV_PIN=() CLI_PIN=()
if ((PIN)); then SRV_PIN=(taskset -c 0) CLI_PIN=(taskset -c 1); fi
# Every client command runs through this (pinned to CPU 1 with --pin).
client() { "${CLI_PIN[@]}" "$@"; }
say() { printf '[couch-bench %s] %s\n' "$(date -u +%T)" "$*" >&2; }
die() { say "FATAL: $*"; exit 1; }

# ---------------------------------------------------------------- tools
setup() {
  local missing=()
  [[ -x /usr/bin/time ]] || missing+=(time)
  command -v zstd >/dev/null || missing+=(zstd)
  command -v ss >/dev/null || missing+=(iproute2)
  if ((${#missing[@]})); then
    say "installing ${missing[*]} (apt-get)"
    local sudo=""; [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  command -v node >/dev/null || die "node (>= 18) is required"
  command -v python3 >/dev/null || die "python3 is required"
  # A separate install, so the test server in .ci/pouch stays unpatched.
  if [[ ! -x $BENCH/node_modules/.bin/pouchdb-server || ! -x $BENCH/node_modules/.bin/couchbackup ]]; then
    say "installing pouchdb-server@4.2.0 and @cloudant/couchbackup@2.11.12 into $BENCH"
    mkdir -p "$BENCH"
    (cd "$BENCH" && { [[ -f package.json ]] || npm init -y >/dev/null; } &&
      npm install --no-audit --no-fund pouchdb-server@4.2.0 @cloudant/couchbackup@2.11.12)
  fi
  node "$HERE/patch-pouchdb.js" "$BENCH/node_modules" || die "patching express-pouchdb failed (see above)"
  PS=$BENCH/node_modules/.bin/pouchdb-server
  CB=$BENCH/node_modules/.bin/couchbackup
  CR=$BENCH/node_modules/.bin/couchrestore
  WL=$TARGET/release/cairn-workload
  if [[ ! -x $WL ]]; then
    say "building cairn-workload"
    (cd "$ROOT" && cargo build --release -q -p cairn-workload)
  fi
}

free_port() {
  local p
  for p in $(seq "$1" 7 $(($1 + 3000))); do
    ss -ltnH "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
  done
  die "no free port from $1"
}

SERVER_PID=""
stop_server() {
  if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; fi
}
trap stop_server EXIT

start_server() {
  local dir=$WORK/server attempt
  mkdir -p "$dir"
  echo '{"admins":{"admin":"s3cret"}}' > "$dir/config.json"
  local store=(--in-memory)
  [[ $STORAGE == memory ]] || store=(--dir "$dir/db")
  PORT=16984
  for attempt in 1 2 3; do
    PORT=$(free_port "$PORT")
    (cd "$dir" && exec "${SRV_PIN[@]}" "$PS" --host 127.0.0.1 --port "$PORT" "${store[@]}" \
      --config "$dir/config.json" --no-stdout-logs > "$dir/stdout.txt" 2>&1) &
    SERVER_PID=$!
    local i
    for i in $(seq 1 120); do
      if ss -ltnpH "sport = :$PORT" 2>/dev/null | grep -q "pid=$SERVER_PID," &&
        curl -sf -u admin:s3cret "http://127.0.0.1:$PORT/_session" 2>/dev/null | grep -q '"name":"admin"'; then
        URL=http://admin:s3cret@127.0.0.1:$PORT
        say "pouchdb-server (patched, storage=$STORAGE) at http://127.0.0.1:$PORT, pid $SERVER_PID"
        return
      fi
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.25
    done
    stop_server
    PORT=$((PORT + 7))
  done
  cat "$dir/stdout.txt" >&2 || true
  die "pouchdb-server did not start"
}

# ---------------------------------------------------------------- records
REC=""
rec() { printf '%s\n' "$1" >> "$REC"; }   # one JSON object per line

# measure NAME STDOUT_FILE CMD...: runs CMD under /usr/bin/time; sets M_SECS M_RSS M_RC.
measure() {
  local name=$1 out=$2; shift 2
  local tf=$WORK/logs/$name.time
  set +e
  /usr/bin/time -f '%e %U %S %M' -o "$tf" "${CLI_PIN[@]}" "$@" > "$out" 2> "$WORK/logs/$name.err"
  M_RC=$?
  set -e
  read -r M_SECS M_USER M_SYS M_RSS < <(tail -1 "$tf") || true
  if [[ ! $M_SECS =~ ^[0-9.]+$ ]]; then M_SECS=0 M_USER=0 M_SYS=0 M_RSS=0; fi
}

doc_count() { client python3 "$HERE/couchbench.py" info --url "$URL" --db "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["doc_count"])'; }

server_rss() {  # current and peak RSS of the server, KiB
  awk '/^VmRSS/{r=$2} /^VmHWM/{h=$2} END{print r+0, h+0}' "/proc/$SERVER_PID/status" 2>/dev/null || echo "0 0"
}

# ---------------------------------------------------------------- main
[[ -n $WORK && $WORK != / ]] || die "bad --work"
rm -rf "$WORK"
mkdir -p "$WORK/logs" "$WORK/peer"
REC=$WORK/records.jsonl
: > "$REC"
T_START=$(date +%s)
setup

CB_VER=$("$CB" --version 2>/dev/null || echo unknown)
CAIRN_VER=""
if ((CAIRN_ON)); then
  if [[ ! -x $CAIRN ]]; then
    say "cairn: no binary at $CAIRN (cargo build --release -p cairn-cli); Cairn part skipped"
    CAIRN_ON=0
  elif ! "$CAIRN" backup couchdb --help 2>&1 | grep -q -- '--db'; then
    # (an older cairn takes `couchdb` for a PATH and prints the generic backup help)
    say "cairn: $CAIRN has no 'backup couchdb' yet; Cairn part skipped"
    CAIRN_ON=0
  else
    CAIRN_VER=$("$CAIRN" --version 2>/dev/null | head -1)
  fi
fi
((CAIRN_ON)) || [[ $ONLY != cairn ]] || die "nothing to run: --only cairn without a usable cairn"

# The data: cairn-workload's five Open edX databases, merged into one database `edx`.
# Its scale 1 has 231,000 documents on day 1.
SCALE=$(python3 -c "print(f'{$DOCS / 231000:.6f}')")
say "generating the workload: $DOCS documents (scale $SCALE), $((DAYS + 1)) states"
"$WL" couchdb --out "$WORK/wl" --days $((DAYS + 1)) --scale "$SCALE" --seed 1 --quiet
dayd() { printf '%s/wl/day%02d/couchdb' "$WORK" "$1"; }

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
rec "$(python3 -c 'import json,sys,platform,os; print(json.dumps({"kind":"env","date":sys.argv[1],"docs_target":int(sys.argv[2]),"days":int(sys.argv[3]),"storage":sys.argv[4],"couchbackup":sys.argv[5],"cairn":sys.argv[6],"cpus":os.cpu_count(),"node":sys.argv[7],"only":sys.argv[8],"kernel":platform.release(),"loadavg_start":sys.argv[9],"pinned":sys.argv[10]=="1"}))' \
  "$(date -u +%FT%TZ)" "$DOCS" "$DAYS" "$STORAGE" "$CB_VER" "$CAIRN_VER" "$(node --version)" "$ONLY" "$LOAD0" "$PIN")"
awk '$1 > 0.7 {print "[couch-bench] warning: load average " $1 " before the start; the machine is busy, the figures will be noisy"}' /proc/loadavg >&2

start_server
DB=edx
say "loading day 0 (_bulk_docs, new_edits default, 1000 per request, 2 in flight)"
L=$(client python3 "$HERE/couchbench.py" load --url "$URL" --db "$DB" --day "$(dayd 1)")
rec "{\"kind\":\"load\",$(echo "$L" | sed 's/^{//')"
say "loaded: $L"

if ((CAIRN_ON)); then
  CAIRN_ENV=(env XDG_CACHE_HOME="$WORK/cairn-cache" XDG_CONFIG_HOME="$WORK/cairn-cache")
  REPO=$WORK/cairn-repo KEY=$WORK/cairn-cache/backup.key
  mkdir -p "$WORK/cairn-cache"
  "${CAIRN_ENV[@]}" "$CAIRN" key generate --output "$KEY" > "$WORK/logs/cairn-key.out" 2>&1 || die "cairn key generate failed"
  "${CAIRN_ENV[@]}" "$CAIRN" init --repo "$REPO" > "$WORK/logs/cairn-init.out" 2>&1 || die "cairn init failed"
fi

backup_peer() {  # DAY DOCS
  local f; f=$(printf '%s/peer/day%02d.json' "$WORK" "$1")
  measure "peer-backup-day$1" "$f" "$CB" --url "$URL" --db "$DB" --mode full -q \
    --log "$WORK/logs/couchbackup-day$1.log"
  [[ $M_RC == 0 ]] || say "couchbackup failed on day $1 (rc $M_RC), see $WORK/logs/peer-backup-day$1.err"
  rec "{\"kind\":\"backup\",\"tool\":\"couchbackup\",\"day\":$1,\"docs\":$2,\"rc\":$M_RC,\"secs\":$M_SECS,\"user\":$M_USER,\"sys\":$M_SYS,\"rss_kb\":$M_RSS,\"bytes\":$(stat -c %s "$f")}"
  say "couchbackup day $1: ${M_SECS} s, RSS ${M_RSS} KiB, $(stat -c %s "$f") bytes"
}

backup_cairn() {  # DAY DOCS
  local before after
  before=$(du -sb "$REPO" | cut -f1)
  measure "cairn-backup-day$1" "$WORK/logs/cairn-backup-day$1.json" "${CAIRN_ENV[@]}" "$CAIRN" backup couchdb \
    --repo "$REPO" --key "$KEY" --url "$URL" --db "$DB" --json
  after=$(du -sb "$REPO" | cut -f1)
  if [[ $M_RC != 0 ]]; then
    say "cairn backup failed on day $1 (rc $M_RC): $(tail -3 "$WORK/logs/cairn-backup-day$1.err" | tr '\n' ' ')"
  fi
  rec "{\"kind\":\"backup\",\"tool\":\"cairn\",\"day\":$1,\"docs\":$2,\"rc\":$M_RC,\"secs\":$M_SECS,\"user\":$M_USER,\"sys\":$M_SYS,\"rss_kb\":$M_RSS,\"bytes\":$((after - before)),\"repo_bytes\":$after}"
  say "cairn day $1: ${M_SECS} s, RSS ${M_RSS} KiB, repo +$((after - before)) bytes (total $after)"
}

for ((d = 1; d <= DAYS; d++)); do
  C=$(client python3 "$HERE/couchbench.py" day --url "$URL" --db "$DB" --prev "$(dayd "$d")" --cur "$(dayd $((d + 1)))")
  rec "{\"kind\":\"churn\",\"day\":$d,$(echo "$C" | sed 's/^{//')"
  N=$(echo "$C" | python3 -c 'import json,sys; print(json.load(sys.stdin)["doc_count"])')
  say "day $d: $C"
  # The server's limits on the state the last backups and the restores
  # meet (the full sweep at the end meets a server settled since).
  if ((LIMITS && d == DAYS)); then
    say "server limits before the last backups (read: 2 in flight; ingest: 1000 per request x 2)"
    LIM=$(client python3 "$HERE/couchbench.py" limits --url "$URL" --db "$DB" --read-concs 2 --batches 1000 --concs 2)
    rec "{\"kind\":\"limits_before\",\"docs\":$N,$(echo "$LIM" | sed 's/^{//')"
  fi
  # Alternate the order, so neither tool always finds the server's caches warmed by the other.
  if ((d % 2)); then
    ((PEER)) && backup_peer "$d" "$N"
    ((CAIRN_ON)) && backup_cairn "$d" "$N"
  else
    ((CAIRN_ON)) && backup_cairn "$d" "$N"
    ((PEER)) && backup_peer "$d" "$N"
  fi
  true
done
N_LAST=$N

# ---------------------------------------------------------------- restores
if ((PEER)); then
  LAST=$(printf '%s/peer/day%02d.json' "$WORK" "$DAYS")
  curl -sf -u admin:s3cret -X PUT "http://127.0.0.1:$PORT/${DB}_peer" > /dev/null || die "PUT ${DB}_peer failed"
  measure peer-restore "$WORK/logs/peer-restore.out" sh -c "exec \"\$0\" --url \"\$1\" --db \"\$2\" -q < \"\$3\"" \
    "$CR" "$URL" "${DB}_peer" "$LAST"
  [[ $M_RC == 0 ]] || say "couchrestore failed (rc $M_RC), see $WORK/logs/peer-restore.err"
  CMP=$(client python3 "$HERE/couchbench.py" compare --url "$URL" --db "$DB" --db2 "${DB}_peer" || echo '{}')
  rec "{\"kind\":\"restore\",\"tool\":\"couchrestore\",\"docs\":$N_LAST,\"rc\":$M_RC,\"secs\":$M_SECS,\"user\":$M_USER,\"sys\":$M_SYS,\"rss_kb\":$M_RSS,\"compare\":$CMP}"
  say "couchrestore: ${M_SECS} s, RSS ${M_RSS} KiB; compare: $CMP"
  curl -sf -u admin:s3cret -X DELETE "http://127.0.0.1:$PORT/${DB}_peer" > /dev/null || true
fi
if ((CAIRN_ON)); then
  # pouchdb-server is one Node.js thread: two requests in flight keep it
  # busy, four cost it 3 % more CPU (2026-12-06: 19.2-19.4 s vs 19.7-20.3 s).
  # Cairn's default (4) is for CouchDB, whose nodes serve requests in parallel.
  measure cairn-restore "$WORK/logs/cairn-restore.json" "${CAIRN_ENV[@]}" "$CAIRN" restore couchdb \
    --repo "$REPO" latest --url "$URL" --db "$DB:${DB}_cairn" --requests 2 --json
  [[ $M_RC == 0 ]] || say "cairn restore failed (rc $M_RC): $(tail -3 "$WORK/logs/cairn-restore.err" | tr '\n' ' ')"
  CMP=$(client python3 "$HERE/couchbench.py" compare --url "$URL" --db "$DB" --db2 "${DB}_cairn" 2> "$WORK/logs/cairn-compare.err" || echo '{}')
  rec "{\"kind\":\"restore\",\"tool\":\"cairn\",\"docs\":$N_LAST,\"rc\":$M_RC,\"secs\":$M_SECS,\"user\":$M_USER,\"sys\":$M_SYS,\"rss_kb\":$M_RSS,\"compare\":$CMP}"
  say "cairn restore: ${M_SECS} s, RSS ${M_RSS} KiB; compare: $CMP"
  curl -sf -u admin:s3cret -X DELETE "http://127.0.0.1:$PORT/${DB}_cairn" > /dev/null || true
fi

# ---------------------------------------------------------------- server limits
if ((LIMITS)); then
  say "server limits (read: _changes + _bulk_get; ingest: _bulk_docs new_edits=false)"
  LIM=$(client python3 "$HERE/couchbench.py" limits --url "$URL" --db "$DB")
  rec "{\"kind\":\"limits\",\"docs\":$N_LAST,$(echo "$LIM" | sed 's/^{//')"
fi
# ---------------------------------------------------------------- paired runs
# The server's speed drifts by a fifth over a run on a shared machine, so a
# limit measured once and a Cairn run measured minutes later can differ by
# that much for no reason of theirs. Each pair measures both back to back
# (in turns: odd pairs the limits first), and the report takes the median.
if ((LIMITS && CAIRN_ON && PAIRS > 0)); then
  PREPO=$WORK/cairn-pair-repo
  pair_limits() {
    PLIM=$(client python3 "$HERE/couchbench.py" limits --url "$URL" --db "$DB" --read-concs 1 --batches 500 --concs 1)
  }
  pair_cairn() {
    rm -rf "$PREPO"
    "${CAIRN_ENV[@]}" "$CAIRN" init --repo "$PREPO" > /dev/null 2>&1 || die "cairn init failed"
    measure "cairn-pair$i-backup" "$WORK/logs/cairn-pair$i-backup.json" "${CAIRN_ENV[@]}" "$CAIRN" backup couchdb \
      --repo "$PREPO" --key "$KEY" --url "$URL" --db "$DB" --json
    PB_RC=$M_RC PB_SECS=$M_SECS
    measure "cairn-pair$i-restore" "$WORK/logs/cairn-pair$i-restore.json" "${CAIRN_ENV[@]}" "$CAIRN" restore couchdb \
      --repo "$PREPO" latest --url "$URL" --db "$DB:${DB}_pair" --requests 2 --json
    PR_RC=$M_RC PR_SECS=$M_SECS
    curl -sf -u admin:s3cret -X DELETE "http://127.0.0.1:$PORT/${DB}_pair" > /dev/null || true
  }
  for ((i = 1; i <= PAIRS; i++)); do
    if ((i % 2)); then pair_limits; pair_cairn; else pair_cairn; pair_limits; fi
    rec "{\"kind\":\"pair\",\"i\":$i,\"docs\":$N_LAST,\"backup_rc\":$PB_RC,\"backup_secs\":$PB_SECS,\"restore_rc\":$PR_RC,\"restore_secs\":$PR_SECS,$(echo "$PLIM" | sed 's/^{//')"
    say "pair $i: cairn backup ${PB_SECS} s (rc $PB_RC), restore ${PR_SECS} s (rc $PR_RC); limits $PLIM"
  done
  rm -rf "$PREPO"
fi

read -r S_RSS S_HWM < <(server_rss)
rec "{\"kind\":\"server\",\"rss_kb\":$S_RSS,\"hwm_kb\":$S_HWM,\"db_dir_bytes\":$(du -sb "$WORK/server" | cut -f1)}"
stop_server

# ---------------------------------------------------------------- sizes
say "sizes (zstd -3; zstd -19 -T2: $ZSTD19)"
RAW=0 Z3=0 Z19=null
if ((PEER)); then
  files=("$WORK"/peer/day*.json)
  for f in "${files[@]}"; do
    RAW=$((RAW + $(stat -c %s "$f")))
    Z3=$((Z3 + $(zstd -q -3 -c "$f" | wc -c)))
  done
  case $ZSTD19 in
    all)
      Z19=0
      for f in "${files[@]}"; do Z19=$((Z19 + $(zstd -q -19 -T2 -c "$f" | wc -c))); done ;;
    last)
      f=${files[-1]}
      Z19=$(python3 -c 'import sys; r,l,z=map(int,sys.argv[1:]); print(round(r*z/l))' \
        "$RAW" "$(stat -c %s "$f")" "$(zstd -q -19 -T2 -c "$f" | wc -c)") ;;
  esac
fi
REPO_BYTES=null
((CAIRN_ON)) && REPO_BYTES=$(du -sb "$REPO" | cut -f1)
rec "{\"kind\":\"sizes\",\"days\":$DAYS,\"peer_raw\":$RAW,\"peer_zstd3\":$Z3,\"peer_zstd19\":$Z19,\"zstd19_mode\":\"$ZSTD19\",\"cairn_repo\":$REPO_BYTES}"
rec "{\"kind\":\"total\",\"secs\":$(($(date +%s) - T_START)),\"loadavg_end\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}"

python3 "$HERE/report.py" "$REC" > "$RESULTS"
say "results: $RESULTS (records: $REC)"
cat "$RESULTS"
