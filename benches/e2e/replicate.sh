#!/usr/bin/env bash
# Replication throughput, local → S3, serve → local and local → ssh://:
# `cairn replicate` beside `restic copy` between two restic repositories
# holding the same data, in one run.
#
# Usage: benches/e2e/replicate.sh [--scale S] [--days N] [--work DIR]
# Each day: the workload's CouchDB dumps (cairn-workload) are backed up into a
# local Cairn repository and a local restic repository, then each is copied to
# its own prefix of a SeaweedFS bucket on loopback (started here). Reports
# wall time, MB/s of the source data, and the bytes the S3 server stored
# (growth of its data directory) per tool per day.
# Needs: restic (Debian), the SeaweedFS of tests/services.sh, cargo.
set -euo pipefail

SCALE=0.5 DAYS=3 WORK=${TMPDIR:-/tmp}/cairn-replicate-bench
while [[ $# -gt 0 ]]; do
  case $1 in
    --scale) SCALE=$2; shift 2 ;;
    --days) DAYS=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "replicate.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
cargo build --release -q -p cairn-cli -p cairn-workload
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release
CAIRN=$TARGET/cairn
command -v restic > /dev/null || { echo "replicate.sh: restic is not installed (apt-get install restic)" >&2; exit 1; }

rm -rf "$WORK"; mkdir -p "$WORK"
"$TARGET/cairn-workload" couchdb --out "$WORK/wl" --days "$DAYS" --scale "$SCALE" --quiet

source tests/services.sh
start_seaweedfs
S3DATA=$SERVICES_DIR/s3
export RESTIC_PASSWORD=bench

"$CAIRN" key generate --output "$WORK/key" > "$WORK/pub"
"$CAIRN" init --repo "$WORK/cairn" --trust "$(cat "$WORK/pub")" > /dev/null
restic -q -r "$WORK/restic" init > /dev/null
# The copy's target shares the source's chunker parameters, as the restic
# documentation advises for copies.
restic -q -r "s3:$AWS_ENDPOINT_URL/test/restic" init --from-repo "$WORK/restic" \
  --from-password-command "echo bench" --copy-chunker-params > /dev/null

s3_bytes() { du -sb "$S3DATA" | cut -f1; }
timed() { local t0; t0=$(date +%s%N); "$@" > /dev/null; awk -v ns=$(($(date +%s%N) - t0)) 'BEGIN { printf "%.3f", ns / 1e9 }'; }

RESULTS=$HERE/replicate-$(date +%F).md
{
  echo "# Replication local → S3: cairn replicate vs restic copy, $(date +%F)"
  echo
  echo "$(nproc) CPUs shared by the tools and SeaweedFS (weed mini) on loopback;"
  echo "restic $(restic version | cut -d' ' -f2); workload: cairn-workload couchdb --scale $SCALE, $DAYS days."
  echo "MB/s = the day's source data (the dumps) divided by the copy's wall time;"
  echo "S3 bytes = growth of the S3 server's data directory during the copy."
  echo
  echo "| day | source data MB | cairn s | cairn MB/s | cairn S3 bytes | restic s | restic MB/s | restic S3 bytes | restic / cairn time | cairn / restic bytes |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} > "$RESULTS"

for day in $(seq -f '%02g' 1 "$DAYS"); do
  src=$WORK/wl/day$day/couchdb
  mb=$(du -sb "$src" | awk '{printf "%.1f", $1 / 1e6}')
  "$CAIRN" backup --repo "$WORK/cairn" --key "$WORK/key" -q "$src" > /dev/null
  restic -q -r "$WORK/restic" backup "$src" > /dev/null
  b0=$(s3_bytes)
  ct=$(timed "$CAIRN" replicate --from "$WORK/cairn" --to s3://test/cairn --concurrency 4)
  b1=$(s3_bytes)
  rt=$(timed restic -q -r "s3:$AWS_ENDPOINT_URL/test/restic" copy --from-repo "$WORK/restic" --from-password-command "echo bench")
  b2=$(s3_bytes)
  awk -v d="$day" -v mb="$mb" -v ct="$ct" -v rt="$rt" -v cb=$((b1 - b0)) -v rb=$((b2 - b1)) 'BEGIN {
    printf "| %s | %s | %.2f | %.1f | %d | %.2f | %.1f | %d | %.2f | %.2f |\n", d, mb, ct, mb / ct, cb, rt, mb / rt, rb, rt / ct, (rb > 0 ? cb / rb : 0)
  }' >> "$RESULTS"
  tail -1 "$RESULTS"
done
# A table of one whole copy by each tool: $ct/$rt seconds, $cb/$rb bytes at
# the destination, $total_mb MB of source data. Arguments: title, the two rows' names.
whole_copy_table() {
  {
    echo
    echo "$1"
    echo
    echo "| | s | MB/s of source data | bytes at the destination |"
    echo "|---|---:|---:|---:|"
    awk -v t="$ct" -v mb="$total_mb" -v b="$cb" -v n="$2" 'BEGIN { printf "| %s | %.2f | %.1f | %d |\n", n, t, mb / t, b }'
    awk -v t="$rt" -v mb="$total_mb" -v b="$rb" -v n="$3" 'BEGIN { printf "| %s | %.2f | %.1f | %d |\n", n, t, mb / t, b }'
    awk -v c="$ct" -v r="$rt" 'BEGIN { printf "\nrestic / cairn time: %.2f\n", r / c }'
  } >> "$RESULTS"
}

# serve → local: every snapshot pulled through `cairn serve` into a new
# local replica, beside `restic copy` of every snapshot into a new local
# restic repository (restic has no server of its own in this comparison).
TOKEN=bench-read-token-000000000000000
printf 'read %s\n' "$TOKEN" > "$WORK/tokens"; chmod 600 "$WORK/tokens"
"$CAIRN" serve --repo "$WORK/cairn" --listen 127.0.0.1:0 --tokens "$WORK/tokens" 2> "$WORK/serve.log" &
SERVE_PID=$!
for i in $(seq 1 50); do grep -q 'http://' "$WORK/serve.log" && break; sleep 0.1; done
SERVE_URL=$(grep -o 'http://[0-9.:]*/' "$WORK/serve.log" | head -1)
total_mb=$(du -sb "$WORK/wl" | awk '{printf "%.1f", $1 / 1e6}')
ct=$(CAIRN_TOKEN=$TOKEN timed "$CAIRN" replicate --from "$SERVE_URL" --to "$WORK/cairn-pull" --concurrency 4)
kill $SERVE_PID; wait $SERVE_PID 2> /dev/null || true
restic -q -r "$WORK/restic-pull" init --from-repo "$WORK/restic" --from-password-command "echo bench" --copy-chunker-params > /dev/null
rt=$(timed restic -q -r "$WORK/restic-pull" copy --from-repo "$WORK/restic" --from-password-command "echo bench")
cb=$(du -sb "$WORK/cairn-pull" | cut -f1); rb=$(du -sb "$WORK/restic-pull" | cut -f1)
whole_copy_table "Every snapshot pulled at once ($DAYS days, $total_mb MB of dumps): cairn serve → local replica vs restic copy local → local." \
  "cairn replicate (serve → local)" "restic copy (local → local)"
tail -6 "$RESULTS"

# local → ssh://: every snapshot copied at once to the throw-away sshd of
# tests/services.sh, beside restic copy into a restic repository on the same
# sshd over sftp (both tools go through the same ssh client and server).
start_sshd
SSH_PORT=${CAIRN_TEST_SSH##*:}; SSH_PORT=${SSH_PORT%%/*}
SSH_USER=$(id -un)
ct=$(timed "$CAIRN" replicate --from "$WORK/cairn" --to "$CAIRN_TEST_SSH/cairn" --concurrency 4)
RESTIC_SFTP=(-o "sftp.command=$CAIRN_SSH_COMMAND -p $SSH_PORT $SSH_USER@127.0.0.1 -s sftp")
restic -q -r "sftp:$SSH_USER@127.0.0.1:$CAIRN_TEST_SSH_DIR/restic" "${RESTIC_SFTP[@]}" init \
  --from-repo "$WORK/restic" --from-password-command "echo bench" --copy-chunker-params > /dev/null
rt=$(timed restic -q -r "sftp:$SSH_USER@127.0.0.1:$CAIRN_TEST_SSH_DIR/restic" "${RESTIC_SFTP[@]}" copy \
  --from-repo "$WORK/restic" --from-password-command "echo bench")
cb=$(du -sb "$CAIRN_TEST_SSH_DIR/cairn" | cut -f1); rb=$(du -sb "$CAIRN_TEST_SSH_DIR/restic" | cut -f1)
whole_copy_table "Every snapshot copied at once ($DAYS days, $total_mb MB of dumps) to an sshd on loopback: cairn replicate local → ssh:// vs restic copy local → sftp:." \
  "cairn replicate (local → ssh://)" "restic copy (local → sftp:)"
tail -6 "$RESULTS"
"$CAIRN" verify --repo "$CAIRN_TEST_SSH/cairn" --read-data > /dev/null && echo "ssh replica verify --read-data: clean"

# The replica is checked like any repository.
"$CAIRN" verify --repo s3://test/cairn --read-data >> "$RESULTS.verify" 2>&1 && echo "replica verify --read-data: clean" || echo "replica verify FAILED"
{ echo; echo "Replica \`verify --read-data\`: $(tail -1 "$RESULTS.verify")"; } >> "$RESULTS"
rm -f "$RESULTS.verify"
echo "results: $RESULTS"
