#!/usr/bin/env python3
"""Compares two directory trees the way a restore should reproduce them.

Usage: treecmp.py SRC DST [--json OUT.json] [--examples N]

Walks SRC and DST with os.lstat (never following symlinks) and compares, per path:

  missing      in SRC, not in DST          extra      in DST, not in SRC
  type         file / dir / symlink / fifo / socket / device differs
  content      regular files: bytes differ (compared only when the sizes match)
  size         regular files: st_size differs
  mode         permission bits (incl. setuid/setgid/sticky) differ
  owner        uid or gid differs
  mtime_s      mtime differs by a whole second or more (not for symlinks: see mtime_link)
  mtime_ns     mtime equal to the second but not to the nanosecond
  mtime_link   symlink mtime differs (to the second)
  xattr        the set of extended attributes or a value differs (includes the
               system.posix_acl_* attributes that carry POSIX ACLs)
  symlink      the link target differs
  hardlink     the set of SRC paths sharing an inode is not also one inode group in DST
  sparse       a regular file of 1 MiB or more with holes in SRC (st_blocks*512 < st_size/2)
               has more than SRC's allocated bytes + max(1 MiB, 10% of its size) allocated
               in DST (the holes were mostly filled; --json lists every such file's numbers)
  rdev         device numbers differ

Prints one line per property with the number of mismatching paths (and a few examples),
and exits 1 if any property mismatches, 0 if the trees are identical by all of them.
The top-level directories themselves are compared (except their names).
"""

import argparse
import json
import os
import stat
import sys

PROPS = ["missing", "extra", "type", "size", "content", "mode", "owner", "mtime_s", "mtime_ns",
         "mtime_link", "xattr", "symlink", "hardlink", "sparse", "rdev"]


def kind(m):
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "chardev"),
                       (stat.S_ISBLK, "blockdev")):
        if test(m):
            return name
    return "unknown"


def walk(root):
    """Returns {relative path: os.stat_result} for root and everything below it."""
    out = {".": os.lstat(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            out[os.path.normpath(os.path.join(rel, name))] = os.lstat(p)
    return out


def xattrs(path):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return None
    res = {}
    for n in names:
        try:
            res[n] = os.getxattr(path, n, follow_symlinks=False)
        except OSError as e:
            res[n] = f"<error {e.errno}>"
    return res


def same_content(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x = fa.read(1 << 20)
            y = fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--json", help="also write the counts and examples here")
    ap.add_argument("--examples", type=int, default=3, help="examples printed per property [3]")
    a = ap.parse_args()

    S, D = walk(a.src), walk(a.dst)
    bad = {p: [] for p in PROPS}

    def flag(prop, path, detail=""):
        bad[prop].append(f"{path}{': ' + detail if detail else ''}")

    for p in sorted(set(S) - set(D)):
        flag("missing", p)
    for p in sorted(set(D) - set(S)):
        flag("extra", p)

    sparse = []  # every SRC file with holes: size, allocated bytes in SRC and DST
    src_groups = {}  # (dev, ino) -> [paths] for regular files with st_nlink > 1 in SRC
    for p in sorted(set(S) & set(D)):
        s, d = S[p], D[p]
        sp, dp = os.path.join(a.src, p), os.path.join(a.dst, p)
        ks, kd = kind(s.st_mode), kind(d.st_mode)
        if ks != kd:
            flag("type", p, f"{ks} vs {kd}")
            continue
        if stat.S_IMODE(s.st_mode) != stat.S_IMODE(d.st_mode):
            flag("mode", p, f"{stat.S_IMODE(s.st_mode):o} vs {stat.S_IMODE(d.st_mode):o}")
        if (s.st_uid, s.st_gid) != (d.st_uid, d.st_gid):
            flag("owner", p, f"{s.st_uid}:{s.st_gid} vs {d.st_uid}:{d.st_gid}")
        if ks == "symlink":
            if s.st_mtime_ns // 10**9 != d.st_mtime_ns // 10**9:
                flag("mtime_link", p)
        elif s.st_mtime_ns // 10**9 != d.st_mtime_ns // 10**9:
            flag("mtime_s", p, f"{s.st_mtime_ns / 1e9:.3f} vs {d.st_mtime_ns / 1e9:.3f}")
        elif s.st_mtime_ns != d.st_mtime_ns:
            flag("mtime_ns", p, f"{s.st_mtime_ns} vs {d.st_mtime_ns}")
        xs, xd = xattrs(sp), xattrs(dp)
        if xs != xd:
            flag("xattr", p, f"{sorted(xs or {})} vs {sorted(xd or {})}")
        if ks == "symlink":
            ts, td = os.readlink(sp), os.readlink(dp)
            if ts != td:
                flag("symlink", p, f"{ts!r} vs {td!r}")
        elif ks == "file":
            if s.st_size != d.st_size:
                flag("size", p, f"{s.st_size} vs {d.st_size}")
            elif not same_content(sp, dp):
                flag("content", p)
            if s.st_nlink > 1:
                src_groups.setdefault((s.st_dev, s.st_ino), []).append(p)
            if s.st_size >= 1 << 20 and s.st_blocks * 512 < s.st_size // 2:
                sparse.append({"path": p, "size": s.st_size, "src_allocated": s.st_blocks * 512,
                               "dst_allocated": d.st_blocks * 512})
                if d.st_blocks * 512 > s.st_blocks * 512 + max(1 << 20, s.st_size // 10):
                    flag("sparse", p, f"{s.st_blocks * 512} vs {d.st_blocks * 512} bytes allocated "
                                      f"(size {s.st_size})")
        elif ks in ("chardev", "blockdev") and s.st_rdev != d.st_rdev:
            flag("rdev", p)

    # Hard links: every SRC inode group (within the tree) must be exactly one DST inode group.
    # (Groups whose other names lie outside SRC count only their names inside it.)
    for paths in src_groups.values():
        if len(paths) < 2:
            continue
        inos = {(D[p].st_dev, D[p].st_ino) for p in paths if p in D}
        if len(inos) != 1 or any(D[p].st_nlink < len(paths) for p in paths if p in D):
            flag("hardlink", paths[0], f"{len(paths)} names in {len(inos)} inodes in DST: {', '.join(paths)}")

    total = sum(len(v) for v in bad.values())
    nfiles = sum(1 for s in S.values() if stat.S_ISREG(s.st_mode))
    print(f"treecmp: {len(S)} paths ({nfiles} regular files) in {a.src}, {len(D)} in {a.dst}")
    for p in PROPS:
        if bad[p]:
            print(f"  {p:<10} {len(bad[p]):>7} mismatches, e.g. " + "; ".join(bad[p][:a.examples]))
    print("treecmp: identical" if total == 0 else
          "treecmp: DIFFERENT in " + ", ".join(p for p in PROPS if bad[p]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"paths_src": len(S), "paths_dst": len(D), "regular_files_src": nfiles,
                       "identical": total == 0,
                       "mismatches": {p: len(v) for p, v in bad.items() if v},
                       "sparse_files": sparse,
                       "examples": {p: v[:20] for p, v in bad.items() if v}}, f, indent=1)
            f.write("\n")
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
