#!/usr/bin/env bash
# Volume benchmark: backs up one file tree of ~55,000 real files (with owners, hard links,
# a sparse file, xattrs, ACLs, symlinks and a FIFO) with Cairn, restic, borg and rustic,
# phase by phase, and checks what each restore gives back. Writes WORK_DIR/volume-results.md
# and WORK_DIR/volume-results.json. Run as root (it chowns files and restores owners).
#
# Usage: benches/e2e/volume.sh WORK_DIR [--tools cairn,restic,borg,rustic] [--cairn BIN]
#                              [--files N] [--keep]
#   WORK_DIR      created if missing; the run writes volume/ (the tree every tool backs up,
#                 by its absolute path), repos/, cache/, restore/, logs/ and the results
#                 (a previous run's are removed first)
#   --tools LIST  comma-separated, run in this order in every phase; a tool whose binary is
#                 missing is skipped with a message [default: cairn,restic,borg,rustic]
#   --cairn BIN   the cairn binary [default: target/release/cairn of this repository]
#   --files N     regular files copied from /usr/include, /usr/lib/python3*, /usr/share
#                 (in that order, sorted by path) [default: 55000; lower for a smoke run]
#   --keep        keep volume/ and repos/ at the end (default: removed, results kept)
#
# Phases (each for every tool before the next one starts): init; first backup; backup with
# nothing changed; one deterministic change of the volume (1% of the files modified, a third
# of those with the same size and their old mtime, 100 files added, 50 removed), applied once;
# backup of the changed volume; restore of the latest snapshot into an empty directory, then
# (untimed) treecmp.py of the restore against the volume. Before each measured backup the
# volume is read once through tar (warm page cache) and `sync` is run.
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }
[[ $# -ge 1 && $1 != -* ]] || usage
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
mkdir -p "$1"
WORK=$(cd "$1" && pwd); shift
TOOLS="cairn,restic,borg,rustic" CAIRN="$ROOT/target/release/cairn" NFILES=55000 KEEP=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --tools) TOOLS=$2; shift 2 ;;
    --cairn) CAIRN=$2; shift 2 ;;
    --files) NFILES=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "volume.sh: unknown argument $1" >&2; usage ;;
  esac
done
[[ $NFILES =~ ^[1-9][0-9]*$ && $NFILES -ge 200 ]] || { echo "volume.sh: --files needs a number >= 200" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "volume.sh: run as root (chown of the volume, owners on restore)" >&2; exit 1; }
TIME=/usr/bin/time
[[ -x $TIME ]] || { echo "volume.sh: $TIME missing; run benches/e2e/setup.sh" >&2; exit 1; }

# ---- the tools (a missing binary skips that tool)
export RESTIC_PASSWORD=cairn-bench BORG_PASSPHRASE=cairn-bench RUSTIC_PASSWORD=cairn-bench
export BORG_BASE_DIR=$WORK/cache/borg BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
RUN=()
IFS=, read -r -a WANT <<<"$TOOLS"
for t in "${WANT[@]}"; do
  case $t in
    cairn) bin=$CAIRN ;;
    restic|borg|rustic) bin=$(command -v "$t" || true) ;;
    *) echo "volume.sh: unknown tool $t (cairn, restic, borg, rustic)" >&2; exit 2 ;;
  esac
  if [[ -n $bin && -x $bin ]]; then
    RUN+=("$t")
  else
    echo "volume.sh: SKIPPING $t: binary not found${bin:+ at $bin}" >&2
  fi
done
((${#RUN[@]})) || { echo "volume.sh: no tool to run" >&2; exit 1; }

VOL=$WORK/volume REPOS=$WORK/repos CACHE=$WORK/cache LOGS=$WORK/logs RESTORE=$WORK/restore
JSONL=$LOGS/records.jsonl
rm -rf "$VOL" "$REPOS" "$CACHE" "$LOGS" "$RESTORE" "$WORK/volume-results.json" "$WORK/volume-results.md"
mkdir -p "$REPOS" "$CACHE" "$LOGS" "$RESTORE"
# Run a private copy of cairn: a rebuild into the same target dir during the run (another
# worktree sharing CARGO_TARGET_DIR) would otherwise swap the binary between phases.
if [[ " ${RUN[*]} " == *" cairn "* ]]; then
  CAIRN_SRC=$CAIRN CAIRN=$CACHE/cairn.bin
  cp "$CAIRN_SRC" "$CAIRN"
fi
declare -A FAILED=()  # tool -> why it stopped (a failed init or backup stops that tool)

json_str() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
record() { echo "$1" >>"$JSONL"; }

version_of() {
  case $1 in
    cairn) echo "$("$CAIRN" --version 2>/dev/null | head -1 || echo unknown)," \
         "$CAIRN_SRC of $(date -u -r "$CAIRN_SRC" +%FT%TZ), sha256 $(sha256sum "$CAIRN" | cut -c1-16)" ;;
    restic) restic version | head -1 ;;
    borg) borg --version | head -1 ;;
    rustic) rustic --version 2>/dev/null | head -1 || echo unknown ;;
  esac
}

# ---------------------------------------------------------------- 1. the volume
build_volume() {
  echo "volume: copying $NFILES regular files (plus the symlinks among them) into $VOL"
  mkdir -p "$VOL"
  # The list: regular files and symlinks of the sources, sorted by path, cut after NFILES
  # regular files. tar (POSIX format: nanosecond mtimes, xattrs) keeps owners and modes.
  local sources=(/usr/include) d
  for d in /usr/lib/python3*; do [[ -d $d ]] && sources+=("$d"); done
  sources+=(/usr/share)
  python3 - "$NFILES" "${sources[@]}" >"$LOGS/volume-files.lst0" <<'PY'
import os, stat, sys
n, sources = int(sys.argv[1]), sys.argv[2:]
count, out = 0, sys.stdout.buffer
for src in sources:
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            try:
                name.encode("utf-8")  # every tool can store the name
                st = os.lstat(p)
            except (OSError, UnicodeEncodeError):
                continue
            if stat.S_ISREG(st.st_mode):
                if count >= n:
                    continue
                count += 1
            elif not stat.S_ISLNK(st.st_mode):
                continue
            out.write(p.lstrip("/").encode() + b"\0")
        if count >= n:
            break
    if count >= n:
        break
if count < n:
    print(f"volume.sh: only {count} regular files in {sources}", file=sys.stderr)
PY
  tar -C / --format=posix --null --no-recursion -T "$LOGS/volume-files.lst0" -cf - 2>"$LOGS/volume-tar.err" \
    | tar -C "$VOL" -xpf - --same-owner 2>>"$LOGS/volume-tar.err"

  # The special cases, in Python for determinism (seeded); setfacl if present.
  python3 - "$VOL" <<'PY'
import os, random, stat, subprocess, shutil, sys
vol = sys.argv[1]
rng = random.Random(20261205)
files = []
for dirpath, dirnames, filenames in os.walk(vol):
    dirnames.sort()
    for name in sorted(filenames):
        p = os.path.join(dirpath, name)
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            files.append((p, st))
sp = os.path.join(vol, "special")
os.makedirs(sp)
open(os.path.join(vol, ".volume-root"), "w").close()  # lets the checks find the restored tree

# Owners: the directory (at depth 2..5) whose subtree holds closest to 3,000 regular files.
counts = {}
for p, _ in files:
    d = os.path.dirname(p)
    while d != vol:
        counts[d] = counts.get(d, 0) + 1
        d = os.path.dirname(d)
owned = min((d for d in counts if 2 <= os.path.relpath(d, vol).count("/") + 1 <= 5),
            key=lambda d: (abs(counts[d] - 3000), d))
for dirpath, dirnames, filenames in os.walk(owned):
    for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
        os.lchown(name, 999, 999)
print(f"volume: chowned {os.path.relpath(owned, vol)} ({counts[owned]} regular files) to 999:999")

# Hard links: 24 pairs (half in the same directory, half in special/hardlinks/) and one group
# of three names in three directories. Sources: every k-th non-empty file.
hl = os.path.join(sp, "hardlinks")
os.makedirs(os.path.join(hl, "a"))
os.makedirs(os.path.join(hl, "b"))
cands = [p for p, st in files if st.st_size > 0]
step = max(1, len(cands) // 30)
picked = cands[::step][:25]
for i, p in enumerate(picked[:24]):
    if i % 2:
        os.link(p, p + ".hardlink")
    else:
        os.link(p, os.path.join(hl, f"pair{i:02d}-{os.path.basename(p)}"))
os.link(picked[24], os.path.join(hl, "a", "triple-" + os.path.basename(picked[24])))
os.link(picked[24], os.path.join(hl, "b", "triple-" + os.path.basename(picked[24])))
print(f"volume: 24 hard-link pairs and one group of 3 names ({os.path.relpath(picked[24], vol)})")

# A sparse file: 1 GiB long, 3 × 2 MiB of data at 0, 400 MiB and 1 GiB - 2 MiB.
sparse = os.path.join(sp, "sparse.img")
with open(sparse, "wb") as f:
    f.truncate(1 << 30)
    for off in (0, 400 << 20, (1 << 30) - (2 << 20)):
        f.seek(off)
        f.write(rng.randbytes(2 << 20))
st = os.stat(sparse)
print(f"volume: sparse file of {st.st_size} bytes, {st.st_blocks * 512} allocated")

# Extended attributes: on 40 files (every k-th), one directory and the sparse file; one
# binary value and one of 2 KiB.
xdir = os.path.join(sp, "xattr-dir")
os.makedirs(xdir)
with open(os.path.join(xdir, "file"), "w") as f:
    f.write("a file in a directory with xattrs\n")
os.setxattr(xdir, "user.cairn", b"directory attribute")
os.setxattr(sparse, "user.cairn", b"sparse")
xstep = max(1, len(files) // 40)
for i, (p, _) in enumerate(files[::xstep][:40]):
    os.setxattr(p, "user.cairn", f"value {i}".encode())
    if i == 0:
        os.setxattr(p, "user.cairn.binary", bytes(range(256)))
    if i == 1:
        os.setxattr(p, "user.cairn.big", b"x" * 2048)
print("volume: xattrs on 40 files, 1 directory and the sparse file")

# POSIX ACLs (stored as system.posix_acl_* xattrs): an access and a default ACL on a
# directory, an access ACL on a file.
if shutil.which("setfacl"):
    adir = os.path.join(sp, "acl-dir")
    os.makedirs(adir)
    with open(os.path.join(adir, "file"), "w") as f:
        f.write("a file with an ACL\n")
    subprocess.run(["setfacl", "-m", "u:999:r-x,g:999:r-x", adir], check=True)
    subprocess.run(["setfacl", "-d", "-m", "u:999:rwx", adir], check=True)
    subprocess.run(["setfacl", "-m", "u:999:rw-", os.path.join(adir, "file")], check=True)
    print("volume: POSIX ACLs on special/acl-dir and special/acl-dir/file")
else:
    print("volume: setfacl missing (apt-get install acl): no ACLs", file=sys.stderr)

# Symlinks (relative, absolute, dangling) and a FIFO.
os.symlink("hardlinks/a", os.path.join(sp, "link-relative"))
os.symlink("/etc/hostname", os.path.join(sp, "link-absolute"))
os.symlink("does/not/exist", os.path.join(sp, "link-dangling"))
os.mkfifo(os.path.join(sp, "fifo"), 0o640)

# Nanosecond mtimes on every 50th file (copied files mostly have whole seconds) and on
# special/ (set last, after its contents).
for p, st in files[::50]:
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns // 10**9 * 10**9 + 123456789))
for dirpath, dirnames, filenames in os.walk(sp, topdown=False):
    for name in filenames + dirnames + [""]:
        p = os.path.join(dirpath, name) if name else dirpath
        if not os.path.islink(p):
            os.utime(p, ns=(1764900000_987654321, 1764900000_987654321))
PY
}

# ---------------------------------------------------------------- the change (phase c)
change_volume() {
  python3 - "$VOL" <<'PY'
import os, random, stat, sys
vol = sys.argv[1]
rng = random.Random(42)
files = []
for dirpath, dirnames, filenames in os.walk(vol):
    dirnames.sort()
    for name in sorted(filenames):
        p = os.path.join(dirpath, name)
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            files.append((p, st))
special = os.path.join(vol, "special") + "/"
cands = [(p, st) for p, st in files
         if st.st_nlink == 1 and st.st_size >= 64 and not p.startswith(special)]
nmod = len(files) // 100
chosen = rng.sample(cands, nmod + 50)
modified, removed = chosen[:nmod], chosen[nmod:]
kinds = {"append": 0, "overwrite": 0, "same_size_old_mtime": 0}
for i, (p, st) in enumerate(modified):
    if i % 3 == 0:  # append: size and mtime change
        with open(p, "ab") as f:
            f.write(rng.randbytes(100 + i % 900))
        kinds["append"] += 1
    else:  # overwrite 16 bytes in the middle with their complement: same size
        off = st.st_size // 2 - 8
        with open(p, "r+b") as f:
            f.seek(off)
            old = f.read(16)
            f.seek(off)
            f.write(bytes(b ^ 0xFF for b in old))
        if i % 3 == 2:  # ... and the old mtime back (like touch -d): only ctime tells
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
            kinds["same_size_old_mtime"] += 1
        else:
            kinds["overwrite"] += 1
for p, _ in removed:
    os.unlink(p)
added = os.path.join(vol, "added")
os.makedirs(added)
dirs = sorted({os.path.dirname(p) for p, _ in cands})
for i in range(100):
    d = added if i < 60 else rng.choice(dirs)
    with open(os.path.join(d, f"cairn-added-{i:03d}.bin"), "wb") as f:
        f.write(rng.randbytes(rng.randint(1, 200) * 1024))
print(f"change: {nmod} of {len(files)} files modified ({kinds}), 100 added, 50 removed")
PY
}

# ---------------------------------------------------------------- measuring
warm() { sync; tar -C "$VOL" -cf - . | cat >/dev/null; sync; }

# CPU seconds (all CPUs, all processes) spent so far, from /proc/stat: user nice system irq
# softirq steal.
busy_cpu_s() { awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" { print ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit }' /proc/stat; }

# measure TOOL STEP BYTES CMD... : runs CMD under /usr/bin/time, logs its output, records
# wall/user/sys/max RSS. Returns CMD's status.
measure() {
  local tool=$1 step=$2 bytes=$3; shift 3
  local tag=$tool-$step rc=0 busy0 busy1
  sync
  busy0=$(busy_cpu_s)
  "$TIME" -f '%e %U %S %M' -o "$LOGS/$tag.time" "$@" >"$LOGS/$tag.out" 2>"$LOGS/$tag.err" || rc=$?
  busy1=$(busy_cpu_s)
  local wall user sys rss load
  read -r wall user sys rss < <(tail -n1 "$LOGS/$tag.time")
  # CPU seconds the rest of the machine used meanwhile: other work sharing the machine
  load=$(awk -v a="$busy0" -v b="$busy1" -v u="$user" -v s="$sys" 'BEGIN { x = b - a - u - s; printf "%.2f", x < 0 ? 0 : x }')
  record "$(printf '{"kind":"measure","tool":"%s","step":"%s","bytes":%s,"wall_s":%s,"user_s":%s,"sys_s":%s,"max_rss_kib":%s,"exit":%d,"other_cpu_s":%s}' \
    "$tool" "$step" "$bytes" "$wall" "$user" "$sys" "$rss" "$rc" "$load")"
  awk -v t="$tool" -v o="$step" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v b="$bytes" -v rc="$rc" -v l="$load" 'BEGIN {
    printf "  %-6s %-9s %8.2f s wall %8.2f s cpu %7.1f MiB rss %8.1f MB/s  (others: %s s cpu)%s\n", t, o, w, u + s, r / 1024,
      (w > 0 ? b / 1e6 / w : 0), l, (rc ? "  FAILED (exit " rc ")" : "") }'
  if ((rc)); then
    record "$(printf '{"kind":"failure","tool":"%s","step":"%s","what":%s}' "$tool" "$step" \
      "$(json_str "$step exited $rc (see logs/$tag.err)")")"
    [[ $step == restore ]] || FAILED[$tool]="$step"
    tail -n 20 "$LOGS/$tag.err" | sed 's/^/    | /' >&2
  fi
  return $rc
}

repo() { echo "$REPOS/$1"; }
RESTIC=(restic --cache-dir "$CACHE/restic" --compression auto)
RUSTIC=(rustic --cache-dir "$CACHE/rustic")
CAIRN_ENV=(env XDG_CACHE_HOME="$CACHE/cairn" XDG_CONFIG_HOME="$CACHE/cairn")

tool_init() {  # TOOL
  case $1 in
    cairn)
      mkdir -p "$CACHE/cairn"
      "${CAIRN_ENV[@]}" "$CAIRN" key generate --output "$CACHE/cairn/backup.key" >"$LOGS/cairn-key.out" 2>&1
      measure cairn init 0 "${CAIRN_ENV[@]}" "$CAIRN" init --repo "$(repo cairn)" ;;
    restic) measure restic init 0 "${RESTIC[@]}" -r "$(repo restic)" init --repository-version 2 ;;
    borg) measure borg init 0 borg init --encryption=authenticated-blake2 "$(repo borg)" ;;
    rustic) measure rustic init 0 "${RUSTIC[@]}" -r "$(repo rustic)" init ;;
  esac
}

tool_backup() {  # TOOL STEP BYTES
  case $1 in
    cairn) measure cairn "$2" "$3" "${CAIRN_ENV[@]}" "$CAIRN" backup --repo "$(repo cairn)" \
             --key "$CACHE/cairn/backup.key" --json "$VOL" ;;
    restic) measure restic "$2" "$3" "${RESTIC[@]}" -r "$(repo restic)" backup --host cairn-bench "$VOL" ;;
    borg) measure borg "$2" "$3" borg create --compression zstd,3 "$(repo borg)::$2" "$VOL" ;;
    rustic) measure rustic "$2" "$3" "${RUSTIC[@]}" -r "$(repo rustic)" backup --host cairn-bench "$VOL" ;;
  esac
}

# Each tool with its defaults, except borg: `extract --sparse` (restic 0.14 has no such
# option; rustic and cairn decide themselves).
tool_restore() {  # TOOL BYTES TARGET
  case $1 in
    cairn) measure cairn restore "$2" "${CAIRN_ENV[@]}" "$CAIRN" restore --repo "$(repo cairn)" latest --target "$3" ;;
    restic) measure restic restore "$2" "${RESTIC[@]}" -r "$(repo restic)" restore latest --target "$3" ;;
    borg) measure borg restore "$2" env -C "$3" borg extract --sparse "$(repo borg)::changed" ;;
    rustic) measure rustic restore "$2" "${RUSTIC[@]}" -r "$(repo rustic)" restore latest "$3" ;;
  esac
}

active() { [[ -z ${FAILED[$1]:-} ]]; }

input_record() {  # STEP
  local bytes files alloc
  bytes=$(du -sb "$VOL" | cut -f1)
  alloc=$(du -sB1 "$VOL" | cut -f1)
  files=$(find "$VOL" -type f | wc -l)
  record "$(printf '{"kind":"input","step":"%s","bytes":%d,"allocated_bytes":%d,"files":%d}' "$1" "$bytes" "$alloc" "$files")"
  awk -v s="$1" -v f="$files" -v b="$bytes" -v a="$alloc" 'BEGIN {
    printf "== %s: %d regular files, %.1f MB (%.1f MB allocated)\n", s, f, b / 1e6, a / 1e6 }'
  BYTES=$bytes
}

backup_phase() {  # STEP
  input_record "$1"
  local t size
  for t in "${RUN[@]}"; do
    active "$t" || continue
    warm
    if tool_backup "$t" "$1" "$BYTES"; then
      size=$(du -sb "$(repo "$t")" | cut -f1)
      record "$(printf '{"kind":"repo_size","tool":"%s","step":"%s","bytes":%d}' "$t" "$1" "$size")"
    fi
  done
}

# ---------------------------------------------------------------- the run
record "$(printf '{"kind":"meta","tools":%s,"files_wanted":%d,"host":%s,"cpus":%d,"mem_kib":%d,"volume":%s,"started":%s}' \
  "$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "${RUN[@]}")" "$NFILES" \
  "$(json_str "$(uname -sr)")" "$(nproc)" "$(awk '/MemTotal/ {print $2}' /proc/meminfo)" \
  "$(json_str "$VOL")" "$(json_str "$(date -u +%FT%TZ)")")"
for t in "${RUN[@]}"; do
  record "$(printf '{"kind":"version","tool":"%s","version":%s}' "$t" "$(json_str "$(version_of "$t")")")"
done

build_volume
echo "volume: ${RUN[*]} on $VOL"
for t in "${RUN[@]}"; do tool_init "$t" || true; done
backup_phase first
backup_phase unchanged
change_volume | tee "$LOGS/change.out"
backup_phase changed

input_record restore
for t in "${RUN[@]}"; do
  active "$t" || continue
  target=$RESTORE/$t
  rm -rf "$target"; mkdir -p "$target"
  if tool_restore "$t" "$BYTES" "$target"; then
    # Tools nest the tree differently (absolute path, relative path, base name): find it by
    # its marker file. Not timed.
    found=$(find "$target" -name .volume-root -print -quit)
    if [[ -n $found ]]; then
      rc=0
      python3 "$HERE/treecmp.py" "$VOL" "$(dirname "$found")" --json "$LOGS/$t-treecmp.json" \
        >"$LOGS/$t-treecmp.txt" 2>&1 || rc=$?
      sed 's/^/  /' "$LOGS/$t-treecmp.txt"
      ((rc <= 1)) || echo "  $t: treecmp.py failed (exit $rc), see logs/$t-treecmp.txt" >&2
      record "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[2])); print(json.dumps({"kind":"fidelity","tool":sys.argv[1],"identical":d["identical"],"mismatches":d["mismatches"],"sparse_files":d["sparse_files"]}))' \
        "$t" "$LOGS/$t-treecmp.json" 2>/dev/null || printf '{"kind":"fidelity","tool":"%s","identical":false,"mismatches":{"treecmp_failed":1}}' "$t")"
    else
      echo "  $t: the restore holds no .volume-root" >&2
      record "$(printf '{"kind":"fidelity","tool":"%s","identical":false,"mismatches":{"tree_not_found":1}}' "$t")"
    fi
  fi
  rm -rf "$target"
done

python3 - "$JSONL" "$WORK/volume-results.json" "$WORK/volume-results.md" <<'PY'
import json, sys
records = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
meta = next(r for r in records if r["kind"] == "meta")
tools = meta["tools"]
versions = {r["tool"]: r["version"] for r in records if r["kind"] == "version"}
inputs = {r["step"]: r for r in records if r["kind"] == "input"}
meas = {(r["tool"], r["step"]): r for r in records if r["kind"] == "measure"}
sizes = {(r["tool"], r["step"]): r["bytes"] for r in records if r["kind"] == "repo_size"}
fid = {r["tool"]: r for r in records if r["kind"] == "fidelity"}
fails = [r for r in records if r["kind"] == "failure"]
STEPS = [("first", "first backup"), ("unchanged", "unchanged backup"),
         ("changed", "changed backup"), ("restore", "restore")]

def ok(t, s):
    m = meas.get((t, s))
    return m if m and m["exit"] == 0 else None

def fmt(x, nd=1):
    return "–" if x is None else f"{x:,.{nd}f}"

summary = {}
for t in tools:
    s = {"version": versions.get(t), "steps": {}}
    for step, _ in STEPS:
        m = ok(t, step)
        s["steps"][step] = None if not m else {
            "wall_s": m["wall_s"], "cpu_s": m["user_s"] + m["sys_s"], "max_rss_kib": m["max_rss_kib"],
            "mb_s": m["bytes"] / 1e6 / m["wall_s"] if m["wall_s"] > 0 else None,
            "repo_bytes_after": sizes.get((t, step))}
    first, unch, chg = (sizes.get((t, x)) for x in ("first", "unchanged", "changed"))
    s["repo_growth_unchanged_bytes"] = unch - first if None not in (first, unch) else None
    s["repo_growth_changed_bytes"] = chg - unch if None not in (unch, chg) else None
    f = fid.get(t)
    s["restore_identical"] = f["identical"] if f else None
    s["restore_mismatches"] = f["mismatches"] if f else None
    s["restore_sparse_files"] = f.get("sparse_files") if f else None
    s["failures"] = [r["what"] for r in fails if r["tool"] == t]
    summary[t] = s

def ratio(other, t, step):  # other's time / t's time: > 1 means t is faster
    a, b = ok(other, step), ok(t, step)
    return a["wall_s"] / b["wall_s"] if a and b and b["wall_s"] > 0 else None

others = [o for o in tools if o != "cairn"] if "cairn" in tools else []
ratios = {o: {step: ratio(o, "cairn", step) for step, _ in STEPS} for o in others}
json.dump({"meta": meta, "inputs": inputs, "summary": summary, "cairn_speed_vs": ratios,
           "records": records}, open(sys.argv[2], "w"), indent=1)

L = ["# Volume benchmark: " + ", ".join(tools) + "\n"]
i0 = inputs.get("first", {})
L.append(f"Volume `{meta['volume']}`: {i0.get('files', 0):,} regular files, {fmt(i0.get('bytes', 0) / 1e6)} MB "
         f"apparent ({fmt(i0.get('allocated_bytes', 0) / 1e6)} MB allocated; the 1 GiB sparse file counts "
         f"1,073.7 MB apparent). {meta['cpus']} CPUs, {fmt(meta['mem_kib'] / 2**20)} GiB RAM, {meta['host']}, "
         f"started {meta['started']}. Tools run one at a time, phase by phase; the volume is read once "
         "(tar) before every backup.\n")
L.append("Versions: " + "; ".join(f"{t}: `{versions.get(t)}`" for t in tools) + "\n")
busy = [(r["other_cpu_s"], r["tool"], r["step"]) for r in records if r["kind"] == "measure" and "other_cpu_s" in r]
if busy:
    worst = max(busy)
    L.append(f"CPU used by other processes while a measured command ran (all CPUs, from /proc/stat, minus "
             f"the command's own): {sum(b[0] for b in busy):.1f} s in total, at most {worst[0]:.1f} s "
             f"(during {worst[1]}'s {worst[2]}); per command in volume-results.json. Near 0 means the "
             "machine was otherwise idle.\n")
L.append("MB = 10^6 bytes; MB/s = the volume's apparent size / wall time. "
         "\"cairn speed vs X\" = X's wall time / cairn's (> 1: cairn is faster).\n")
L.append("## Time\n")
hdr = "| step | " + " | ".join(f"{t} s | {t} MB/s" for t in tools) + "".join(f" | cairn speed vs {o}" for o in others) + " |"
L.append(hdr)
L.append("|---|" + "---:|---:|" * len(tools) + "---:|" * len(others))
for step, label in STEPS:
    cells = []
    for t in tools:
        m = summary[t]["steps"][step]
        cells += [fmt(m["wall_s"], 2), fmt(m["mb_s"])] if m else ["–", "–"]
    L.append(f"| {label} | " + " | ".join(cells) + "".join(f" | {fmt(ratios[o][step], 2)}" for o in others) + " |")
L.append("")
L.append("## CPU (user + sys s) and peak RSS (MiB)\n")
L.append("| step | " + " | ".join(f"{t} CPU s | {t} RSS MiB" for t in tools) + " |")
L.append("|---|" + "---:|---:|" * len(tools))
for step, label in STEPS:
    cells = []
    for t in tools:
        m = summary[t]["steps"][step]
        cells += [fmt(m["cpu_s"], 2), fmt(m["max_rss_kib"] / 1024)] if m else ["–", "–"]
    L.append(f"| {label} | " + " | ".join(cells) + " |")
L.append("")
L.append("## Repository size (bytes, `du -sb`)\n")
L.append("| | " + " | ".join(tools) + " |")
L.append("|---|" + "---:|" * len(tools))
for step, label in STEPS[:3]:
    L.append(f"| after {label} | " + " | ".join(fmt(sizes.get((t, step)), 0) for t in tools) + " |")
L.append("| **growth of the unchanged backup** | " + " | ".join(fmt(summary[t]["repo_growth_unchanged_bytes"], 0) for t in tools) + " |")
L.append("| growth of the changed backup | " + " | ".join(fmt(summary[t]["repo_growth_changed_bytes"], 0) for t in tools) + " |")
L.append("")
L.append("## Restore fidelity (treecmp.py: paths with a mismatch, per property)\n")
L.append("mtime_ns = equal to the second, not to the nanosecond. Sparse file = `special/sparse.img`'s "
         "allocated MB in the restore (in the volume: "
         + next((fmt(x["src_allocated"] / 1e6) for f in fid.values() for x in f.get("sparse_files") or []), "–")
         + " MB of 1,073.7 MB).\n")
L.append("| tool | sparse file allocated MB | restore |")
L.append("|---|---:|---|")
for t in tools:
    s = summary[t]
    if s["restore_identical"] is None:
        v = "– (no restore)"
    elif s["restore_identical"]:
        v = "identical"
    else:
        v = "differs: " + ", ".join(f"{k} ({n:,})" for k, n in s["restore_mismatches"].items())
    sp = [x for x in s["restore_sparse_files"] or [] if x["path"].endswith("sparse.img")]
    L.append(f"| {t} | {fmt(sp[0]['dst_allocated'] / 1e6) if sp else '–'} | {v} |")
L.append("")
if fails:
    L.append("## Failures\n")
    L += [f"- **{r['tool']}**: {r['what']}" for r in fails]
    L.append("")
open(sys.argv[3], "w").write("\n".join(L))
PY

((KEEP)) || rm -rf "$VOL" "$REPOS" "$RESTORE"
echo "volume: wrote $WORK/volume-results.json and $WORK/volume-results.md"
cat "$WORK/volume-results.md"
