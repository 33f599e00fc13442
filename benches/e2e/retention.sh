#!/usr/bin/env bash
# Retention and garbage collection on the 14-day workload: each day's
# backup (under that day's date), then `forget` with the school's 7/4/12
# policy, then `gc`. Reports, per day: snapshots kept, repository size,
# the unique data the kept snapshots need, and gc's time and peak memory;
# at the end a full `verify --read-data`.
#
# Usage: benches/e2e/retention.sh WORK_DIR [--cairn BIN] [--days N]
#   WORK_DIR holds day01..dayNN from workload.sh; results go to
#   WORK_DIR/retention.md and WORK_DIR/retention.json.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${1:?usage: retention.sh WORK_DIR [--cairn BIN] [--days N]}; shift
CAIRN=$ROOT/target/release/cairn DAYS=""
while [ $# -gt 0 ]; do
  case $1 in
    --cairn) CAIRN=$2; shift 2 ;;
    --days) DAYS=$2; shift 2 ;;
    *) echo "retention.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$CAIRN" ] || { echo "retention.sh: $CAIRN missing (cargo build --release -p cairn-cli)" >&2; exit 2; }
mapfile -t days < <(cd "$WORK" && ls -d day[0-9][0-9] | sort)
[ -z "$DAYS" ] || days=("${days[@]:0:$DAYS}")
R=$WORK/retention-repo CUR=$WORK/retention-current KEY=$WORK/retention.key
rm -rf "$R" "$CUR" "$KEY"
"$CAIRN" key generate --output "$KEY" >/dev/null
"$CAIRN" init --repo "$R" >/dev/null
rows=() json=()
start=$(date -u -d 2026-10-25 +%s)
for i in "${!days[@]}"; do
  d=${days[$i]}
  date=$(date -u -d "@$((start + i * 86400))" +%Y-%m-%dT02:00:00Z)
  rm -rf "$CUR"; mkdir -p "$CUR"; cp -al "$WORK/$d/." "$CUR/current"
  "$CAIRN" backup --repo "$R" --key "$KEY" --host node4 --time "$date" --quiet "$CUR/current" >/dev/null
  "$CAIRN" forget --repo "$R" --keep-daily 7 --keep-weekly 4 --keep-monthly 12 >/dev/null
  gc=$( { /usr/bin/time -f '%e %M' "$CAIRN" gc --repo "$R" --grace 0s --json > "$WORK/retention-gc.json"; } 2>&1 | tail -1)
  read -r gc_s gc_kib <<<"$gc"
  stats=$("$CAIRN" stats --repo "$R" --json)
  size=$(du -sb "$R" | cut -f1)
  read -r kept unique dead deleted <<<"$(python3 -c '
import json,sys
s=json.loads(sys.argv[1]); g=json.load(open(sys.argv[2]))
print(s["snapshots"], s["unique_bytes"], s["unreferenced_bytes"], g["deleted_packs"])' "$stats" "$WORK/retention-gc.json")"
  printf '%s %s kept=%s repo=%.1f MB unique=%.1f MB gc=%ss %s MiB deleted=%s packs\n' "$d" "$date" "$kept" \
    "$(echo "$size/1000000" | bc -l)" "$(echo "$unique/1000000" | bc -l)" "$gc_s" "$((gc_kib / 1024))" "$deleted" >&2
  mb() { printf %.1f "$(echo "$1/1000000" | bc -l)"; }
  rows+=("| ${d#day} | ${date%%T*} | $kept | $(mb "$size") | $(mb "$unique") | $(mb "$dead") | $gc_s | $((gc_kib / 1024)) | $deleted |")
  json+=("{\"day\":\"$d\",\"date\":\"$date\",\"kept\":$kept,\"repo_bytes\":$size,\"unique_bytes\":$unique,\"unreferenced_bytes\":$dead,\"gc_secs\":$gc_s,\"gc_rss_kib\":$gc_kib,\"deleted_packs\":$deleted}")
done
verify=$( { /usr/bin/time -f '%e %M' "$CAIRN" verify --repo "$R" --read-data > "$WORK/retention-verify.txt"; } 2>&1 | tail -1)
status=$(tail -1 "$WORK/retention-verify.txt")
{
  echo "| day | snapshot date | snapshots kept | repository MB | data the kept snapshots need, uncompressed MB | stored data no snapshot needs, uncompressed MB | gc s | gc peak RSS MiB | packs deleted |"
  echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Final \`verify --read-data\`: $status ($verify: wall s, peak RSS KiB)."
} > "$WORK/retention.md"
printf '[%s]\n' "$(IFS=,; echo "${json[*]}")" > "$WORK/retention.json"
cat "$WORK/retention.md"
rm -rf "$CUR"
