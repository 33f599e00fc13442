#!/usr/bin/env bash
# Backs up each day of a workload (from workload.sh) with Cairn, restic and borg (and rustic
# and bupstash if asked for), one tool at a time, and writes WORK_DIR/results.json and
# WORK_DIR/results.md.
#
# Usage: benches/e2e/compare.sh WORK_DIR [--days N] [--tools cairn,restic,borg,rustic,bupstash]
#                               [--cairn PATH_TO_BINARY] [--cairn-v1 PATH] [--drop-caches]
#                               [--restore-reps N]
#   WORK_DIR      holds day01/ .. dayNN/ from workload.sh; the run adds current/ (the staged
#                 day, the one path every tool backs up), repos/, cache/, restore/, logs/
#                 and the results (a previous run's are removed first)
#   --days N      only the first N days [default: all dayNN dirs]
#   --tools LIST  comma-separated, run in this order every day [default: cairn,restic,borg];
#                 also rustic and bupstash (cargo install rustic-rs / bupstash, see setup.sh),
#                 and cairn-v1 (a second cairn, with --cairn-v1)
#   --cairn PATH  the cairn binary [default: target/release/cairn of this repository]
#   --cairn-v1 PATH  the binary of tool cairn-v1: another cairn build (say, one writing
#                 format v1) run in the same way beside the first, with its own repository
#   --drop-caches drop the page cache before every measured command (root only); by
#                 default the staged input is read once before every backup instead, so
#                 every tool starts from a warm cache
#   --restore-reps N  restore the last day N times per tool, the tools taking turns (each
#                 round starts with the next tool), and report the median [default: 1]; a
#                 single restore of a day varies by a fifth on a shared machine
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }
[[ $# -ge 1 && $1 != -* ]] || usage
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(cd "$1" && pwd); shift
DAYS="" TOOLS="cairn,restic,borg" CAIRN="$ROOT/target/release/cairn" CAIRN_V1="" DROP=0 REPS=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --days) DAYS=$2; shift 2 ;;
    --tools) TOOLS=$2; shift 2 ;;
    --cairn) CAIRN=$2; shift 2 ;;
    --cairn-v1) CAIRN_V1=$2; shift 2 ;;
    --drop-caches) DROP=1; shift ;;
    --restore-reps) REPS=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; usage ;;
  esac
done

[[ -z $DAYS || $DAYS =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --days needs a positive number" >&2; exit 2; }
[[ $REPS =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --restore-reps needs a positive number" >&2; exit 2; }
TIME=/usr/bin/time
[[ -x $TIME ]] || { echo "compare.sh: $TIME missing; run benches/e2e/setup.sh" >&2; exit 1; }
if ((DROP)) && ! { [[ -w /proc/sys/vm/drop_caches ]] && sync && echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
  echo "compare.sh: cannot write /proc/sys/vm/drop_caches; --drop-caches needs root" >&2; exit 1
fi

# ---- the days
ALL_DAYS=()
for d in "$WORK"/day[0-9][0-9]; do [[ -d $d ]] && ALL_DAYS+=("$(basename "$d")"); done
((${#ALL_DAYS[@]})) || { echo "compare.sh: no dayNN/ dirs in $WORK (run workload.sh first)" >&2; exit 1; }
[[ -z $DAYS ]] || ALL_DAYS=("${ALL_DAYS[@]:0:$DAYS}")
NDAYS=${#ALL_DAYS[@]}

# ---- the tools (a missing binary skips that tool)
export RESTIC_PASSWORD=cairn-bench BORG_PASSPHRASE=cairn-bench
export BORG_BASE_DIR=$WORK/cache/borg BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export RUSTIC_PASSWORD=cairn-bench
RUN=()
IFS=, read -r -a WANT <<<"$TOOLS"
for t in "${WANT[@]}"; do
  case $t in
    cairn) bin=$CAIRN ;;
    cairn-v1) bin=$CAIRN_V1 ;;
    restic|borg|rustic|bupstash) bin=$(command -v "$t" || true) ;;
    *) echo "compare.sh: unknown tool $t (cairn, cairn-v1, restic, borg, rustic, bupstash)" >&2; exit 2 ;;
  esac
  if [[ -n $bin && -x $bin ]]; then
    RUN+=("$t")
  else
    echo "compare.sh: SKIPPING $t: binary not found${bin:+ at $bin}" \
      "$([[ $t == cairn* ]] && echo '(build it: cargo build --release, or pass --cairn/--cairn-v1 PATH)' || echo '(run benches/e2e/setup.sh)')" >&2
  fi
done
((${#RUN[@]})) || { echo "compare.sh: no tool to run" >&2; exit 1; }

REPOS=$WORK/repos CACHE=$WORK/cache LOGS=$WORK/logs CUR=$WORK/current RESTORE=$WORK/restore
JSONL=$LOGS/records.jsonl
rm -rf "$REPOS" "$CACHE" "$LOGS" "$RESTORE" "$CUR" "$WORK/results.json" "$WORK/results.md"
mkdir -p "$REPOS" "$CACHE" "$LOGS" "$RESTORE"
declare -A FAILED=()  # tool -> why it stopped (a failed init or backup stops that tool)

json_str() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
record() { echo "$1" >>"$JSONL"; }

cairn_bin() { if [[ $1 == cairn-v1 ]]; then echo "$CAIRN_V1"; else echo "$CAIRN"; fi; }

version_of() {
  case $1 in
    cairn*) "$(cairn_bin "$1")" --version 2>/dev/null | head -1 || echo unknown ;;
    restic) restic version | head -1 ;;
    borg) borg --version | head -1 ;;
    rustic) rustic --version 2>/dev/null | head -1 || echo unknown ;;
    bupstash) bupstash version 2>/dev/null | head -1 || echo unknown ;;
  esac
}

record "$(printf '{"kind":"meta","days":%d,"restore_reps":%d,"tools":%s,"drop_caches":%s,"host":%s,"cpus":%d,"mem_kib":%d,"started":%s}' \
  "$NDAYS" "$REPS" "$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "${RUN[@]}")" \
  "$( ((DROP)) && echo true || echo false)" "$(json_str "$(uname -sr)")" "$(nproc)" \
  "$(awk '/MemTotal/ {print $2}' /proc/meminfo)" "$(json_str "$(date -u +%FT%TZ)")")"
for t in "${RUN[@]}"; do
  record "$(printf '{"kind":"version","tool":"%s","version":%s}' "$t" "$(json_str "$(version_of "$t")")")"
done

# Called before every measured command, in the same way for every tool.
settle() {
  sync
  if ((DROP)); then echo 3 >/proc/sys/vm/drop_caches; fi
}
warm_input() { ((DROP)) || find "$CUR" -type f -print0 | xargs -0 -r cat >/dev/null; }

# measure TOOL OP DAY BYTES CMD... : runs CMD under /usr/bin/time, logs its output, records
# wall/user/sys/max RSS. Returns CMD's status.
measure() {
  local tool=$1 op=$2 day=$3 bytes=$4; shift 4
  local tag; tag=$(printf '%s-day%02d-%s' "$tool" "$day" "$op")
  settle
  local rc=0
  "$TIME" -f '%e %U %S %M' -o "$LOGS/$tag.time" "$@" >"$LOGS/$tag.out" 2>"$LOGS/$tag.err" || rc=$?
  local wall user sys rss
  read -r wall user sys rss < <(tail -n1 "$LOGS/$tag.time")
  record "$(printf '{"kind":"measure","tool":"%s","op":"%s","day":%d,"bytes":%s,"wall_s":%s,"user_s":%s,"sys_s":%s,"max_rss_kib":%s,"exit":%d}' \
    "$tool" "$op" "$day" "$bytes" "$wall" "$user" "$sys" "$rss" "$rc")"
  awk -v t="$tool" -v o="$op" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v b="$bytes" -v rc="$rc" 'BEGIN {
    printf "  %-8s %-8s %8.2f s wall %8.2f s cpu %7.1f MiB rss %8.1f MB/s%s\n", t, o, w, u + s, r / 1024,
      (w > 0 ? b / 1e6 / w : 0), (rc ? "  FAILED (exit " rc ")" : "") }'
  if ((rc)); then
    record "$(printf '{"kind":"failure","tool":"%s","op":"%s","day":%d,"what":%s}' "$tool" "$op" "$day" \
      "$(json_str "$op on day $day exited $rc (see logs/$tag.err)")")"
    [[ $op != init && $op != backup ]] || FAILED[$tool]="$op on day $day"
    tail -n 20 "$LOGS/$tag.err" | sed 's/^/    | /' >&2
  fi
  return $rc
}

# ---- per-tool commands (run with the cwd = WORK_DIR; they back up the relative path "current")
repo() { echo "$REPOS/$1"; }
RESTIC=(restic --cache-dir "$CACHE/restic" --compression auto)
# cairn_cmd TOOL: sets CAIRN_CMD to how that cairn build runs (its own cache and config).
cairn_cmd() { CAIRN_CMD=(env XDG_CACHE_HOME="$CACHE/$1" XDG_CONFIG_HOME="$CACHE/$1" "$(cairn_bin "$1")"); }
RUSTIC=(rustic --cache-dir "$CACHE/rustic")
# bupstash: the repository, key, send log (its stat cache for incremental puts) and query
# cache by env.
BUPSTASH=(env BUPSTASH_REPOSITORY="$REPOS/bupstash" BUPSTASH_KEY="$CACHE/bupstash/backup.key"
          BUPSTASH_SEND_LOG="$CACHE/bupstash/send.log" XDG_CACHE_HOME="$CACHE/bupstash" bupstash)
bupstash_id() {  # DAY: the id `bupstash put` printed for that day
  tail -n1 "$LOGS/$(printf 'bupstash-day%02d' "$1")-backup.out"
}

tool_init() {  # TOOL
  [[ $1 != cairn* ]] || cairn_cmd "$1"
  case $1 in
    cairn*)
      mkdir -p "$CACHE/$1"
      "${CAIRN_CMD[@]}" key generate --output "$CACHE/$1/backup.key" >"$LOGS/$1-key.out" 2>&1
      measure "$1" init 1 0 "${CAIRN_CMD[@]}" init --repo "$(repo "$1")" ;;
    restic) measure restic init 1 0 "${RESTIC[@]}" -r "$(repo restic)" init --repository-version 2 ;;
    borg) measure borg init 1 0 borg init --encryption=authenticated-blake2 "$(repo borg)" ;;
    rustic) measure rustic init 1 0 "${RUSTIC[@]}" -r "$(repo rustic)" init ;;
    bupstash)
      mkdir -p "$CACHE/bupstash"
      bupstash new-key -o "$CACHE/bupstash/backup.key" >"$LOGS/bupstash-key.out" 2>&1
      measure bupstash init 1 0 "${BUPSTASH[@]}" init ;;
  esac
}

tool_backup() {  # TOOL DAY BYTES
  [[ $1 != cairn* ]] || cairn_cmd "$1"
  local archive; archive=$(printf 'day%02d' "$2")
  case $1 in
    cairn*) measure "$1" backup "$2" "$3" "${CAIRN_CMD[@]}" backup --repo "$(repo "$1")" \
             --key "$CACHE/$1/backup.key" --json current ;;
    restic) measure restic backup "$2" "$3" "${RESTIC[@]}" -r "$(repo restic)" backup --host cairn-bench current ;;
    borg) measure borg backup "$2" "$3" borg create --compression zstd,3 "$(repo borg)::$archive" current ;;
    rustic) measure rustic backup "$2" "$3" "${RUSTIC[@]}" -r "$(repo rustic)" backup --host cairn-bench current ;;
    bupstash) measure bupstash backup "$2" "$3" "${BUPSTASH[@]}" put name="$archive" current ;;
  esac
}

tool_restore() {  # TOOL DAY BYTES TARGET
  [[ $1 != cairn* ]] || cairn_cmd "$1"
  local archive; archive=$(printf 'day%02d' "$2")
  case $1 in
    cairn*) measure "$1" restore "$2" "$3" "${CAIRN_CMD[@]}" restore --repo "$(repo "$1")" latest --target "$4" ;;
    restic) measure restic restore "$2" "$3" "${RESTIC[@]}" -r "$(repo restic)" restore latest --target "$4" ;;
    borg) measure borg restore "$2" "$3" env -C "$4" borg extract "$(repo borg)::$archive" ;;
    rustic) measure rustic restore "$2" "$3" "${RUSTIC[@]}" -r "$(repo rustic)" restore latest "$4" ;;
    bupstash) measure bupstash restore "$2" "$3" "${BUPSTASH[@]}" restore --into "$4" id="$(bupstash_id "$2")" ;;
  esac
}

tool_check() {  # TOOL DAY
  [[ $1 != cairn* ]] || cairn_cmd "$1"
  local bytes; bytes=$(du -sb "$(repo "$1")" | cut -f1)
  case $1 in
    cairn*) measure "$1" check "$2" "$bytes" "${CAIRN_CMD[@]}" verify --repo "$(repo "$1")" --read-data ;;
    restic) measure restic check "$2" "$bytes" "${RESTIC[@]}" -r "$(repo restic)" check --read-data ;;
    borg) measure borg check "$2" "$bytes" borg check --verify-data "$(repo borg)" ;;
    rustic) measure rustic check "$2" "$bytes" "${RUSTIC[@]}" -r "$(repo rustic)" check --read-data ;;
    # bupstash has no repository-wide data check: `get` of the newest snapshot decrypts and
    # verifies every chunk it needs.
    bupstash) measure bupstash check "$2" "$bytes" sh -c '"$@" >/dev/null' sh "${BUPSTASH[@]}" get id="$(bupstash_id "$2")" ;;
  esac
}

# Compares a restored tree with current/ (not timed). Tools nest the tree differently
# (restic keeps the absolute path, borg the relative one), so find it by its couchdb/ dir.
check_restored() {  # TOOL DAY TARGET
  local found root ok=false
  found=$(find "$3" -type d -name couchdb -print -quit)
  root=${found%/couchdb}
  if [[ -n $found ]] && diff -rq "$root" "$CUR" >"$LOGS/$1-day$(printf %02d "$2")-restore.diff" 2>&1; then
    ok=true
  else
    echo "  $1: RESTORED TREE DIFFERS from current/ (see logs/)" >&2
    record "$(printf '{"kind":"failure","tool":"%s","op":"restore","day":%d,"what":%s}' "$1" "$2" \
      "$(json_str "restored tree of day $2 differs from the input (see logs/$1-day$(printf %02d "$2")-restore.diff)")")"
  fi
  record "$(printf '{"kind":"restore_check","tool":"%s","day":%d,"identical":%s}' "$1" "$2" "$ok")"
}

# restore_once TOOL DAY BYTES [check]: a timed restore into a fresh target, compared with
# the input when asked, then removed.
restore_once() {
  local target=$RESTORE/$1
  rm -rf "$target"; mkdir -p "$target"
  if tool_restore "$1" "$2" "$3" "$target" && [[ ${4:-} == check ]]; then
    check_restored "$1" "$2" "$target"
  fi
  rm -rf "$target"
}

# Not timed: keeps `backup --json`'s summary and checks `snapshots --json` (newest last).
cairn_sanity() {  # TOOL DAY
  [[ $1 != cairn* ]] || cairn_cmd "$1"
  local tag; tag=$(printf '%s-day%02d' "$1" "$2")
  "${CAIRN_CMD[@]}" snapshots --repo "$(repo "$1")" --json >"$LOGS/$tag-snapshots.json" 2>"$LOGS/$tag-snapshots.err" || true
  python3 - "$2" "$LOGS/$tag-backup.out" "$LOGS/$tag-snapshots.json" "$1" >>"$JSONL" <<'PY' || echo "  $1: could not read its JSON output (see logs/)" >&2
import json, sys
day, backup_out, snaps, tool = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
try:
    summary = json.load(open(backup_out))
except ValueError:
    summary = None
    print(f"  {tool}: backup --json did not print one JSON document on day {day}", file=sys.stderr)
try:
    listing = json.load(open(snaps))
except ValueError:
    listing = None
if not isinstance(listing, list) or len(listing) != day or not all("id" in s and "time" in s for s in listing):
    print(f"  {tool}: snapshots --json after day {day} is not a list of {day} snapshots with id and time", file=sys.stderr)
newest = listing[-1].get("id") if isinstance(listing, list) and listing and isinstance(listing[-1], dict) else None
print(json.dumps({"kind": "cairn_summary", "tool": tool, "day": day, "backup_json": summary, "snapshots": len(listing) if isinstance(listing, list) else None, "newest_id": newest}))
PY
}

active() { [[ -z ${FAILED[$1]:-} ]]; }

cd "$WORK"
echo "compare: ${RUN[*]} over $NDAYS days in $WORK"
for t in "${RUN[@]}"; do
  tool_init "$t" || true
done

for ((i = 0; i < NDAYS; i++)); do
  day=$((i + 1)) src=$WORK/${ALL_DAYS[$i]}
  # stage the day at the same path: a fresh tree of hard links to that day's files
  rm -rf "$CUR"
  cp -al "$src" "$CUR"
  bytes=$(du -sb "$CUR" | cut -f1)
  files=$(find "$CUR" -type f | wc -l)
  record "$(printf '{"kind":"input","day":%d,"bytes":%d,"files":%d}' "$day" "$bytes" "$files")"
  awk -v d="${ALL_DAYS[$i]}" -v f="$files" -v b="$bytes" 'BEGIN { printf "== %s: %d files, %.1f MB\n", d, f, b / 1e6 }'

  for t in "${RUN[@]}"; do
    active "$t" || continue
    warm_input
    if tool_backup "$t" "$day" "$bytes"; then
      size=$(du -sb "$(repo "$t")" | cut -f1)
      record "$(printf '{"kind":"repo_size","tool":"%s","day":%d,"bytes":%d}' "$t" "$day" "$size")"
      [[ $t != cairn* ]] || cairn_sanity "$t" "$day"
    fi
  done

  if ((day == 1 || day == NDAYS)); then
    for t in "${RUN[@]}"; do
      active "$t" || continue
      restore_once "$t" "$day" "$bytes" check
      tool_check "$t" "$day" || true
    done
  fi
  # More restores of the last day, the tools taking turns (checked once, above).
  if ((day == NDAYS)); then
    for ((r = 1; r < REPS; r++)); do
      for ((k = 0; k < ${#RUN[@]}; k++)); do
        t=${RUN[$(((k + r) % ${#RUN[@]}))]}
        active "$t" || continue
        restore_once "$t" "$day" "$bytes"
      done
    done
  fi
done
rm -rf "$CUR" "$RESTORE"

python3 "$HERE/report.py" "$JSONL" --json "$WORK/results.json" --md "$WORK/results.md"
echo "compare: wrote $WORK/results.json and $WORK/results.md"
cat "$WORK/results.md"
