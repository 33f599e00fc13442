#!/usr/bin/env bash
# Scale benchmark for Cairn alone: (1) first backups of growing trees of small files (10^4,
# 10^5, 3x10^5, 10^6 files by default), each into a fresh repository, and a second, unchanged
# backup of the largest; (2) one repository growing to M snapshots of a small volume, with
# `cairn snapshots` and one backup measured after 1, 10, 100 and M snapshots. Every measured
# command runs under /usr/bin/time (wall, user, sys, peak RSS). Writes
# WORK_DIR/scale-results.md and WORK_DIR/scale-results.json (and WORK_DIR/logs/).
#
# Usage: benches/e2e/scale.sh WORK_DIR [--files N] [--snapshots M] [--cairn BIN] [--keep]
#   WORK_DIR         created if missing; the run writes tree/, snapvol/, repos/, cache/, logs/
#                    and the results (a previous run's are removed first)
#   --files N        files in the largest tree (1000 per directory; the steps are the
#                    default sizes below N, then N) [default: 1000000]
#   --snapshots M    snapshots in the snapshot repository [default: 300]
#   --cairn BIN      the cairn binary [default: target/release/cairn of this repository]
#   --keep           keep tree/, snapvol/ and repos/ at the end (default: removed)
#
# Part 1 (files). The tree WORK_DIR/tree is dNNNN/fNNNN, 1000 files a directory, 100-4000
# bytes each: seeded slices of a seeded word stream (compresses like text, dedups little);
# directory k's files depend only on the seed and k, so the tree is grown in place from one
# step to the next and every run builds the same tree. Each step: grow the tree, `init` a new
# repository, back up WORK_DIR/tree (measured), `du -sb` the repository, then delete the
# previous step's repository. After the last step, a second backup of the unchanged tree
# (parent = the first) is measured with the repository's growth.
# Part 2 (snapshots). A 5,000-file volume (WORK_DIR/snapvol, same generator, another seed)
# is backed up M+1 times into its own repository with a fixed --host and --time a day apart,
# the last one now; before every backup but the first, 10 seeded files are rewritten. After
# snapshot 1, 10, 100 and M (those <= M): `cairn snapshots` 3 times (median wall and RSS
# reported), and the next backup is the measured one ("backup with k snapshots"), first run
# three times on copies of the repository (median reported). Every
# backup's time and RSS is recorded anyway.
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }
[[ $# -ge 1 && $1 != -* ]] || usage
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
mkdir -p "$1"
WORK=$(cd "$1" && pwd); shift
CAIRN="$ROOT/target/release/cairn" NFILES=1000000 NSNAP=300 KEEP=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --files) NFILES=$2; shift 2 ;;
    --snapshots) NSNAP=$2; shift 2 ;;
    --cairn) CAIRN=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "scale.sh: unknown argument $1" >&2; usage ;;
  esac
done
[[ $NFILES =~ ^[1-9][0-9]*$ && $NFILES -ge 1000 ]] || { echo "scale.sh: --files needs a number >= 1000" >&2; exit 2; }
[[ $NSNAP =~ ^[1-9][0-9]*$ ]] || { echo "scale.sh: --snapshots needs a number >= 1" >&2; exit 2; }
[[ -x $CAIRN ]] || { echo "scale.sh: no cairn binary at $CAIRN (cargo build --release -p cairn-cli)" >&2; exit 1; }
TIME=/usr/bin/time
[[ -x $TIME ]] || { echo "scale.sh: $TIME missing; run benches/e2e/setup.sh" >&2; exit 1; }

TREE=$WORK/tree SNAPVOL=$WORK/snapvol REPOS=$WORK/repos CACHE=$WORK/cache LOGS=$WORK/logs
JSONL=$LOGS/records.jsonl
rm -rf "$TREE" "$SNAPVOL" "$REPOS" "$CACHE" "$LOGS" "$WORK"/.pool-*.bin "$WORK/scale-results.json" "$WORK/scale-results.md"
mkdir -p "$REPOS" "$CACHE/cairn" "$LOGS"
export XDG_CACHE_HOME=$CACHE/cairn XDG_CONFIG_HOME=$CACHE/cairn
KEY=$CACHE/cairn/backup.key
HOST=cairn-scale-bench

json_str() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
record() { echo "$1" >>"$JSONL"; }

# The steps of part 1: the default sizes below N, then N.
STEPS=()
for s in 10000 100000 300000 1000000; do ((s < NFILES)) && STEPS+=("$s"); done
STEPS+=("$NFILES")

# gen DIR SEED FILES [REWRITE_ROUND]: makes DIR/dNNNN/fNNNN up to FILES files (directories
# already complete are left alone; 1000 files a directory). With REWRITE_ROUND r > 0 instead
# rewrites 10 seeded files of the existing FILES with new content of round r.
gen() {
  python3 - "$@" <<'PY'
import os, random, sys
root, seed, nfiles = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = int(sys.argv[4]) if len(sys.argv) > 4 else 0
PER = 1000
# A word stream of ~16 MB, the same for every directory (cached as .pool-SEED.bin beside ROOT, i.e. in WORK_DIR):
# files are slices of it at seeded offsets and lengths, so they compress like text and
# (almost) never share a chunk.
cache = os.path.join(os.path.dirname(os.path.abspath(root)), f".pool-{seed}.bin")
if os.path.exists(cache):
    pool = open(cache, "rb").read()
else:
    prng = random.Random(seed)
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "de", "an", "or", "el", "is", "um", "ba", "qu"]
    words = ["".join(prng.choices(syll, k=prng.randint(1, 4))) for _ in range(5000)]
    cum, acc = [], 0.0
    for i in range(len(words)):
        acc += 1.0 / (i + 1)  # Zipf-like, as in text
        cum.append(acc)
    pool, size = [], 0
    while size < 16 << 20:
        line = " ".join(prng.choices(words, cum_weights=cum, k=prng.randint(6, 16))) + ".\n"
        pool.append(line)
        size += len(line)
    pool = "".join(pool).encode()
    open(cache, "wb").write(pool)
P = len(pool) - 4096

def content(r):
    n = r.randint(100, 4000)
    off = r.randrange(P)
    return pool[off:off + n]

ndirs = (nfiles + PER - 1) // PER
if rnd == 0:
    for d in range(ndirs):
        dn = os.path.join(root, f"d{d:04d}")
        want = min(PER, nfiles - d * PER)
        if os.path.isdir(dn) and len(os.listdir(dn)) == want:
            continue
        os.makedirs(dn, exist_ok=True)
        r = random.Random(seed * 1000003 + d)
        for f in range(want):
            with open(os.path.join(dn, f"f{f:04d}"), "wb") as fh:
                fh.write(content(r))
else:
    r = random.Random(seed * 7919 + rnd)
    for i in r.sample(range(nfiles), 10):
        d, f = divmod(i, PER)
        with open(os.path.join(root, f"d{d:04d}", f"f{f:04d}"), "wb") as fh:
            fh.write(content(r))
PY
}

# measure TAG EXTRA_JSON CMD... : runs CMD under /usr/bin/time (stdout, stderr and the time
# line in logs/TAG.*), records wall/user/sys/max RSS with EXTRA_JSON's fields. Exits on failure.
measure() {
  local tag=$1 extra=$2 rc=0 wall user sys rss; shift 2
  "$TIME" -f '%e %U %S %M' -o "$LOGS/$tag.time" "$@" >"$LOGS/$tag.out" 2>"$LOGS/$tag.err" || rc=$?
  read -r wall user sys rss < <(tail -n1 "$LOGS/$tag.time")
  record "$(printf '{"kind":"measure","tag":"%s",%s"wall_s":%s,"user_s":%s,"sys_s":%s,"max_rss_kib":%s,"exit":%d}' \
    "$tag" "${extra:+$extra,}" "$wall" "$user" "$sys" "$rss" "$rc")"
  if ((rc)); then
    echo "scale.sh: $tag FAILED (exit $rc):" >&2
    tail -n 20 "$LOGS/$tag.err" | sed 's/^/    | /' >&2
    record "$(printf '{"kind":"failure","tag":"%s","what":%s}' "$tag" "$(json_str "$tag exited $rc (see logs/$tag.err)")")"
    return $rc
  fi
  LAST_WALL=$wall LAST_RSS=$rss
}

record "$(printf '{"kind":"meta","files":%d,"snapshots":%d,"host":%s,"cpus":%d,"mem_kib":%d,"cairn":%s,"version":%s,"started":%s}' \
  "$NFILES" "$NSNAP" "$(json_str "$(uname -sr)")" "$(nproc)" "$(awk '/MemTotal/ {print $2}' /proc/meminfo)" \
  "$(json_str "$CAIRN")" "$(json_str "$("$CAIRN" --version | head -1)")" "$(json_str "$(date -u +%FT%TZ)")")"
"$CAIRN" key generate --output "$KEY" >"$LOGS/key.out" 2>&1

# ---------------------------------------------------------------- part 1: files
prev=
for n in "${STEPS[@]}"; do
  t0=$(date +%s.%N)
  gen "$TREE" 20261205 "$n"
  t1=$(date +%s.%N)
  bytes=$(du -sb "$TREE" | cut -f1)
  echo "files: tree of $n files ($((bytes / 1000000)) MB apparent), grown in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }') s"
  repo=$REPOS/files-$n
  "$CAIRN" init --repo "$repo" >"$LOGS/init-files-$n.out" 2>&1
  sync
  measure "files-$n-first" "\"part\":\"files\",\"files\":$n,\"bytes\":$bytes,\"step\":\"first\"" \
    "$CAIRN" backup --repo "$repo" --key "$KEY" --host "$HOST" --json "$TREE"
  size=$(du -sb "$repo" | cut -f1)
  record "$(printf '{"kind":"repo_size","files":%d,"step":"first","bytes":%d}' "$n" "$size")"
  printf '  first backup: %8.2f s %7.1f MiB rss; repository %d bytes\n' "$LAST_WALL" "$(awk -v r="$LAST_RSS" 'BEGIN { print r / 1024 }')" "$size"
  [[ -n $prev ]] && rm -rf "$prev"
  prev=$repo
done
n=${STEPS[-1]}
sync
measure "files-$n-unchanged" "\"part\":\"files\",\"files\":$n,\"bytes\":$bytes,\"step\":\"unchanged\"" \
  "$CAIRN" backup --repo "$prev" --key "$KEY" --host "$HOST" --json "$TREE"
size2=$(du -sb "$prev" | cut -f1)
record "$(printf '{"kind":"repo_size","files":%d,"step":"unchanged","bytes":%d}' "$n" "$size2")"
printf '  unchanged backup: %8.2f s %7.1f MiB rss; repository grew %d bytes\n' "$LAST_WALL" "$(awk -v r="$LAST_RSS" 'BEGIN { print r / 1024 }')" "$((size2 - size))"
((KEEP)) || rm -rf "$TREE" "$prev"

# ---------------------------------------------------------------- part 2: snapshots
SNAPFILES=5000
gen "$SNAPVOL" 20261206 "$SNAPFILES"
repo=$REPOS/snapshots
"$CAIRN" init --repo "$repo" >"$LOGS/init-snapshots.out" 2>&1
NOW=$(date -u +%s)
CHECK=()
for k in 1 10 100 "$NSNAP"; do
  ((k <= NSNAP)) && [[ " ${CHECK[*]} " != *" $k "* ]] && CHECK+=("$k")
done
echo "snapshots: $((NSNAP + 1)) backups of $SNAPFILES files into one repository; measured after ${CHECK[*]}"
for ((i = 1; i <= NSNAP + 1; i++)); do
  ((i > 1)) && gen "$SNAPVOL" 20261206 "$SNAPFILES" "$i"
  when=$(date -u -d "@$((NOW - (NSNAP + 1 - i) * 86400))" +%FT%TZ)
  have=$((i - 1))  # snapshots in the repository before this backup
  if [[ " ${CHECK[*]} " == *" $have "* ]]; then
    # The backup measured at a checkpoint, three times on copies of the
    # repository (one run's peak RSS varies by a few percent).
    for r in 1 2 3; do
      rm -rf "$repo.probe"; cp -a "$repo" "$repo.probe"
      measure "snap-probe-$have-$r" "\"part\":\"snapshots\",\"step\":\"probe\",\"snapshots_before\":$have,\"run\":$r" \
        "$CAIRN" backup --repo "$repo.probe" --key "$KEY" --host "$HOST" --time "$when" --json "$SNAPVOL"
    done
    rm -rf "$repo.probe"
  fi
  measure "snap-backup-$i" "\"part\":\"snapshots\",\"step\":\"backup\",\"index\":$i,\"snapshots_before\":$have" \
    "$CAIRN" backup --repo "$repo" --key "$KEY" --host "$HOST" --time "$when" --json "$SNAPVOL"
  if [[ " ${CHECK[*]} " == *" $i "* ]]; then
    for r in 1 2 3; do
      measure "snap-list-$i-$r" "\"part\":\"snapshots\",\"step\":\"list\",\"snapshots\":$i,\"run\":$r" \
        "$CAIRN" snapshots --repo "$repo"
    done
    listed=$("$CAIRN" snapshots --repo "$repo" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
    record "$(printf '{"kind":"listed","snapshots":%d,"listed":%d}' "$i" "$listed")"
    printf '  after %d snapshots: `cairn snapshots` lists %d, last run %.2f s %.1f MiB; repository %d bytes\n' \
      "$i" "$listed" "$LAST_WALL" "$(awk -v r="$LAST_RSS" 'BEGIN { print r / 1024 }')" "$(du -sb "$repo" | cut -f1)"
  fi
done
((KEEP)) || rm -rf "$SNAPVOL" "$repo" "$WORK"/.pool-*.bin

# ---------------------------------------------------------------- results
python3 - "$JSONL" "$WORK/scale-results.json" "$WORK/scale-results.md" <<'PY'
import json, statistics, sys
records = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
meta = next(r for r in records if r["kind"] == "meta")
meas = [r for r in records if r["kind"] == "measure"]
sizes = {(r["files"], r["step"]): r["bytes"] for r in records if r["kind"] == "repo_size"}
listed = {r["snapshots"]: r["listed"] for r in records if r["kind"] == "listed"}
fails = [r for r in records if r["kind"] == "failure"]
MiB = 1024.0
mb = lambda kib: kib * 1024 / 1e6  # KiB -> MB (10^6 bytes)

files = []
for r in meas:
    if r.get("part") == "files":
        files.append({"files": r["files"], "step": r["step"], "input_bytes": r["bytes"],
                      "wall_s": r["wall_s"], "cpu_s": round(r["user_s"] + r["sys_s"], 2),
                      "max_rss_mb": round(mb(r["max_rss_kib"]), 1),
                      "files_per_s": round(r["files"] / r["wall_s"]) if r["wall_s"] > 0 else None,
                      "repo_bytes_after": sizes.get((r["files"], r["step"]))})
big = max(f["files"] for f in files)
g = [sizes.get((big, "first")), sizes.get((big, "unchanged"))]
growth = g[1] - g[0] if None not in g else None

backups = {r["snapshots_before"]: r for r in meas if r.get("step") == "backup"}
probes = {}
for r in meas:
    if r.get("step") == "probe":
        probes.setdefault(r["snapshots_before"], []).append(r)
lists = {}
for r in meas:
    if r.get("step") == "list":
        lists.setdefault(r["snapshots"], []).append(r)
snaps = []
for k in sorted(lists):
    runs = lists[k]
    b = backups.get(k)
    snaps.append({"snapshots": k, "listed": listed.get(k),
                  "list_wall_s_median": statistics.median(x["wall_s"] for x in runs),
                  "list_max_rss_mb_median": round(mb(statistics.median(x["max_rss_kib"] for x in runs)), 1),
                  "list_wall_s_runs": [x["wall_s"] for x in runs],
                  "backup_wall_s": (statistics.median(x["wall_s"] for x in probes[k]) if k in probes
                                    else b["wall_s"] if b else None),
                  "backup_max_rss_mb": (round(mb(statistics.median(x["max_rss_kib"] for x in probes[k])), 1)
                                        if k in probes else round(mb(b["max_rss_kib"]), 1) if b else None),
                  "backup_max_rss_mb_runs": [round(mb(x["max_rss_kib"]), 1) for x in probes.get(k, [])]})
all_backups = [{"index": r["index"], "snapshots_before": r["snapshots_before"], "wall_s": r["wall_s"],
                "max_rss_mb": round(mb(r["max_rss_kib"]), 1)} for r in sorted(backups.values(), key=lambda r: r["index"])]

# Acceptance
acc = []
big_first = next(f for f in files if f["files"] == big and f["step"] == "first")
if big >= 1000000:
    acc.append({"what": f"first backup of {big:,} files peaks at <= 300 MB RSS",
                "value": f"{big_first['max_rss_mb']} MB", "holds": big_first["max_rss_mb"] <= 300})
else:
    acc.append({"what": "first backup of 1,000,000 files peaks at <= 300 MB RSS",
                "value": f"not measured (largest tree {big:,} files: {big_first['max_rss_mb']} MB)", "holds": None})
last = snaps[-1] if snaps else None
one = next((s for s in snaps if s["snapshots"] == 1), None)
if last and last["snapshots"] >= 300:
    acc.append({"what": f"`cairn snapshots` with {last['snapshots']} snapshots under 1 s",
                "value": f"{last['list_wall_s_median']} s", "holds": last["list_wall_s_median"] < 1})
    acc.append({"what": f"`cairn snapshots` with {last['snapshots']} snapshots <= 50 MB",
                "value": f"{last['list_max_rss_mb_median']} MB", "holds": last["list_max_rss_mb_median"] <= 50})
    if one and one["backup_max_rss_mb"] and last["backup_max_rss_mb"]:
        ratio = last["backup_max_rss_mb"] / one["backup_max_rss_mb"]
        acc.append({"what": f"backup with {last['snapshots']} snapshots within 10 % of the one-snapshot case's peak RSS",
                    "value": f"{last['backup_max_rss_mb']} MB vs {one['backup_max_rss_mb']} MB ({(ratio - 1) * 100:+.1f} %)",
                    "holds": ratio <= 1.10})
else:
    acc.append({"what": "the 300-snapshot figures", "value": f"not measured (--snapshots {meta['snapshots']})", "holds": None})

json.dump({"meta": meta, "files": files, "repo_growth_unchanged_bytes": growth, "snapshots": snaps,
           "snapshot_backups": all_backups, "acceptance": acc, "failures": fails, "records": records},
          open(sys.argv[2], "w"), indent=1)

fmt = lambda x, nd=1: "–" if x is None else f"{x:,.{nd}f}"
L = [f"# Scale benchmark: Cairn\n",
     f"`{meta['version']}`; {meta['cpus']} CPUs, {fmt(meta['mem_kib'] / 2**20)} GiB RAM, {meta['host']}, "
     f"started {meta['started']}. MB = 10^6 bytes. Every command under `/usr/bin/time` (wall, user+sys, peak RSS); "
     "page cache warm (the trees were just written), `sync` before each part-1 backup.\n",
     "## Files: first backup of N small files (100–4000 bytes, 1000 a directory), fresh repository each\n",
     "| files | input MB | wall s | CPU s | files/s | peak RSS MB | repository MB |",
     "|---:|---:|---:|---:|---:|---:|---:|"]
for f in files:
    label = f"{f['files']:,}" + ("" if f["step"] == "first" else " (unchanged, 2nd backup)")
    L.append(f"| {label} | {fmt(f['input_bytes'] / 1e6)} | {fmt(f['wall_s'], 2)} | {fmt(f['cpu_s'], 2)} | "
             f"{fmt(f['files_per_s'], 0)} | {fmt(f['max_rss_mb'])} | {fmt((f['repo_bytes_after'] or 0) / 1e6)} |")
L.append(f"\nRepository growth of the unchanged backup of {big:,} files: {fmt(growth, 0)} bytes.\n")
L.append(f"## Snapshots: one repository, 5,000 files, 10 rewritten between backups, --time a day apart\n")
L.append("`cairn snapshots`: median of 3 runs. Backup: the next backup after that many snapshots "
         "(parent = the newest; 10 changed files), run 3 times on copies of the repository: median (runs).\n")
L.append("| snapshots | listed | `snapshots` wall s (runs) | `snapshots` peak RSS MB | backup wall s | backup peak RSS MB |")
L.append("|---:|---:|---:|---:|---:|---:|")
for s in snaps:
    L.append(f"| {s['snapshots']:,} | {s['listed']} | {fmt(s['list_wall_s_median'], 2)} ({', '.join(f'{x:.2f}' for x in s['list_wall_s_runs'])}) | "
             f"{fmt(s['list_max_rss_mb_median'])} | {fmt(s['backup_wall_s'], 2)} | {fmt(s['backup_max_rss_mb'])}"
             + (f" ({', '.join(str(x) for x in s['backup_max_rss_mb_runs'])})" if s['backup_max_rss_mb_runs'] else "") + " |")
if all_backups:
    w = [b["wall_s"] for b in all_backups[1:]] or [0]
    r = [b["max_rss_mb"] for b in all_backups[1:]] or [0]
    L.append(f"\nAll {len(all_backups)} backups: the first (no parent) {all_backups[0]['wall_s']:.2f} s, "
             f"{all_backups[0]['max_rss_mb']} MB; the others {min(w):.2f}–{max(w):.2f} s (median {statistics.median(w):.2f}), "
             f"peak RSS {min(r)}–{max(r)} MB (median {statistics.median(r)}).\n")
L.append("## Acceptance\n")
L.append("| figure | measured | holds |")
L.append("|---|---|---|")
for a in acc:
    L.append(f"| {a['what']} | {a['value']} | {'yes' if a['holds'] else ('–' if a['holds'] is None else '**no**')} |")
L.append("")
if fails:
    L.append("## Failures\n")
    L += [f"- {r['what']}" for r in fails]
    L.append("")
open(sys.argv[3], "w").write("\n".join(L))
PY
echo "scale: wrote $WORK/scale-results.json and $WORK/scale-results.md"
cat "$WORK/scale-results.md"
