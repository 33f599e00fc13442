#!/usr/bin/env python3
"""Builds the "volumes" part of the workload: a tree of real files copied once from this
machine (a deterministic, hash-ordered selection under /usr/share and /usr/lib), changed a
little every day (two files edited in place, one added, one removed), and tarred
deterministically into OUT/dayNN/volumes.tar.

Usage: volumes.py OUT_DIR --days N [--bytes B] [--seed S] [--roots /usr/share,/usr/lib]
"""

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys

MAX_FILE = 32 << 20  # skip single files bigger than this


def candidates(roots):
    """Regular files under roots, ordered by a hash of their path (a stable random order)."""
    out = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if not os.path.isfile(p) or os.path.islink(p) or not 0 < st.st_size <= MAX_FILE:
                    continue
                if not os.access(p, os.R_OK):
                    continue
                out.append((hashlib.sha1(p.encode()).hexdigest(), p, st.st_size))
    out.sort()
    return [(p, size) for _, p, size in out]


def copy_in(src, tree):
    dst = os.path.join(tree, src.lstrip("/"))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o755 if os.access(src, os.X_OK) else 0o644)
    return dst


def tree_files(tree):
    files = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames))
    return files


def edit_overwrite(rng, path):
    """Overwrites 1-16 KiB somewhere in the file (size unchanged)."""
    size = os.path.getsize(path)
    n = min(size, rng.randint(1024, 16384))
    off = rng.randint(0, size - n)
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(rng.randbytes(n))


def edit_insert(rng, path):
    """Inserts 100-4000 bytes of text at a random offset (the rest of the file shifts)."""
    with open(path, "rb") as f:
        data = f.read()
    off = rng.randint(0, len(data))
    words = [b"config", b"value", b"enabled", b"path", b"version", b"# changed", b"true", b"42"]
    ins = bytearray()
    want = rng.randint(100, 4000)
    while len(ins) < want:
        ins += rng.choice(words) + (b"\n" if rng.random() < 0.15 else b" ")
    with open(path, "wb") as f:
        f.write(data[:off] + bytes(ins) + data[off:])


def tar(tree, dest):
    tmp = dest + ".tmp"
    subprocess.run(
        ["tar", "--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner",
         "--format=gnu", "-C", tree, "-cf", tmp, "."],
        check=True,
    )
    os.replace(tmp, dest)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--days", type=int, required=True)
    ap.add_argument("--bytes", type=int, default=300_000_000)
    ap.add_argument("--seed", default="1")
    ap.add_argument("--roots", default="/usr/share,/usr/lib")
    a = ap.parse_args()

    tree = os.path.join(a.out, ".volumes-tree")
    shutil.rmtree(tree, ignore_errors=True)
    os.makedirs(tree)
    pool = candidates(a.roots.split(","))
    total, nxt = 0, 0
    while nxt < len(pool) and total < a.bytes:
        p, size = pool[nxt]
        nxt += 1
        try:
            copy_in(p, tree)
            total += size
        except OSError as e:
            print(f"volumes: skipping {p}: {e}", file=sys.stderr)
    print(f"volumes: {total / 1e6:.1f} MB in {nxt} files copied from {a.roots}", file=sys.stderr)

    for day in range(1, a.days + 1):
        if day > 1:
            rng = random.Random(f"cairn-volumes-{a.seed}-{day}")
            files = tree_files(tree)
            a_file, b_file, gone = rng.sample(files, 3)
            edit_overwrite(rng, a_file)
            edit_insert(rng, b_file)
            os.remove(gone)
            while nxt < len(pool):
                p, _ = pool[nxt]
                nxt += 1
                try:
                    copy_in(p, tree)
                    break
                except OSError:
                    continue
        day_dir = os.path.join(a.out, f"day{day:02d}")
        os.makedirs(day_dir, exist_ok=True)
        tar(tree, os.path.join(day_dir, "volumes.tar"))
    shutil.rmtree(tree)


if __name__ == "__main__":
    main()
