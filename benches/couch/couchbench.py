#!/usr/bin/env python3
"""Helpers for benches/couch/run.sh: load the workload into a CouchDB-API server, apply one
day of churn, measure the server's own ingest and read limits, and compare two databases.

Every subcommand prints one JSON object on stdout (its figures); progress goes to stderr.
Standard library only.

  couchbench.py info      --url URL --db DB
  couchbench.py load      --url URL --db DB --day DIR [--tombstones F] [--conflicts F]
  couchbench.py day       --url URL --db DB --prev DIR --cur DIR [--conflicts F]
  couchbench.py limits    --url URL --db DB [--read-concs 1,2,4] [--batches 500,1000,2000]
                          [--concs 1,2,4] [--read-batch 500]
  couchbench.py compare   --url URL --db SRC --db2 DST [--sample N]

DIR is one day of `cairn-workload couchdb` output (DIR/*.json, `_all_docs?include_docs=true`
dumps); all its databases are loaded into the one database DB. URL carries the credentials
(http://user:pass@host:port).
"""

import argparse
import base64
import concurrent.futures as cf
import glob
import http.client
import json
import os
import random
import re
import sys
import threading
import time
import urllib.parse

ROW_RE = re.compile(rb'^\{"id":"([^"]+)","key":"[^"]+","value":\{"rev":"([^"]+)"\}')


def log(*a):
    print("[couchbench]", *a, file=sys.stderr, flush=True)


class Couch:
    """A tiny keep-alive client: one HTTPConnection per thread."""

    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port or 5984
        self.headers = {"Accept": "application/json"}
        if u.username:
            cred = f"{urllib.parse.unquote(u.username)}:{urllib.parse.unquote(u.password or '')}"
            self.headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        self.local = threading.local()

    def conn(self):
        c = getattr(self.local, "c", None)
        if c is None:
            c = http.client.HTTPConnection(self.host, self.port, timeout=600)
            self.local.c = c
        return c

    def raw(self, method, path, body=None):
        """Returns (status, bytes). body: bytes or a JSON-able object."""
        h = dict(self.headers)
        if body is not None and not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body, separators=(",", ":")).encode()
        if body is not None:
            h["Content-Type"] = "application/json"
        for attempt in range(3):
            c = self.conn()
            try:
                c.request(method, path, body=body, headers=h)
                r = c.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, ConnectionError, OSError):
                c.close()
                self.local.c = None
                if attempt == 2:
                    raise
                time.sleep(0.2)
        raise RuntimeError("unreachable")

    def json(self, method, path, body=None, ok=(200, 201, 202)):
        st, data = self.raw(method, path, body)
        if st not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {st}: {data[:300]!r}")
        return json.loads(data)


def q(db):
    return "/" + urllib.parse.quote(db, safe="")


# ---------------------------------------------------------------- workload rows

def clean_body(doc):
    """The generator mimics some Mongo-shaped documents with top-level `_type`; CouchDB
    rejects unknown `_` members, so they become `type_`-style names."""
    out = {}
    for k, v in doc.items():
        if k in ("_id", "_rev"):
            continue
        if k.startswith("_"):
            k = k[1:] + "_"
        out[k] = v
    return out


def rows(path):
    """Yields (id, rev, raw_line) for every row of an `_all_docs?include_docs=true` dump."""
    with open(path, "rb") as f:
        for line in f:
            m = ROW_RE.match(line)
            if m:
                yield m.group(1).decode(), m.group(2).decode(), line


def row_doc(line):
    line = line.rstrip(b"\r\n")
    if line.endswith(b","):
        line = line[:-1]
    return json.loads(line)["doc"]


def day_files(d):
    files = sorted(glob.glob(os.path.join(d, "*.json")))
    if not files:
        raise SystemExit(f"no *.json in {d}")
    return files


def post_batches(c, db, batches, conc, new_edits=True):
    """POSTs _bulk_docs batches (lists of docs) with `conc` in flight; returns (results, errors)."""
    results, errors = [], []

    def one(docs):
        body = {"docs": docs}
        if not new_edits:
            body["new_edits"] = False
        return c.json("POST", q(db) + "/_bulk_docs", body)

    with cf.ThreadPoolExecutor(conc) as ex:
        for res in ex.map(one, batches):
            for r in res:
                (errors if "error" in r else results).append(r)
    return results, errors


def chunks(seq, n):
    return [seq[i : i + n] for i in range(0, len(seq), n)]


def hexid(rng, n=32):
    return "%0*x" % (n, rng.getrandbits(4 * n))


DESIGN_DOCS = [
    {
        "_id": "_design/progress",
        "language": "javascript",
        "views": {
            "by_course": {
                "map": "function (doc) { if (doc.type === 'student_module') { emit([doc.course_id, doc.module_type], doc.grade); } }",
                "reduce": "_count",
            },
            "by_user": {"map": "function (doc) { if (doc.username) { emit(doc.username, null); } }"},
        },
    },
    {
        "_id": "_design/forum",
        "language": "javascript",
        "views": {
            "threads": {
                "map": "function (doc) { if (doc.type === 'comment' || doc.type === 'thread' || doc.thread_id) { emit([doc.course_id, doc.thread_id || doc._id], 1); } }",
                "reduce": "_sum",
            }
        },
    },
    {
        "_id": "_design/admin",
        "language": "javascript",
        "views": {
            "by_type": {"map": "function (doc) { emit(doc.type || null, null); }", "reduce": "_count"},
            "modified": {"map": "function (doc) { if (doc.modified) { emit(doc.modified, null); } }"},
        },
    },
]


def make_conflicts(c, db, targets, rng, tag):
    """targets: [(id, gen, parent_hash or None, body)]; writes a sibling leaf of generation
    `gen` for each (new_edits=false), as a replication from a second writer would: it shares
    the parent revision when one is given, else it is a new root (gen 1)."""
    docs = []
    for did, gen, parent, body in targets:
        new = hexid(rng)
        d = dict(body)
        d["_id"], d["_rev"] = did, f"{gen}-{new}"
        d["conflict_source"] = tag
        d["modified"] = "2025-03-%02dT12:00:00Z" % rng.randint(1, 28)
        if parent:
            d["_revisions"] = {"start": gen, "ids": [new, parent]}
        docs.append(d)
    _, errs = post_batches(c, db, chunks(docs, 500), 1, new_edits=False)
    if errs:
        raise SystemExit(f"conflict writes failed: {errs[:3]}")
    return len(docs)


def cmd_info(a):
    c = Couch(a.url)
    i = c.json("GET", q(a.db))
    print(json.dumps({"doc_count": i.get("doc_count"), "update_seq": i.get("update_seq"),
                      "doc_del_count": i.get("doc_del_count")}))


def cmd_load(a):
    c = Couch(a.url)
    rng = random.Random(a.seed)
    st, body = c.raw("PUT", q(a.db))
    if st not in (201, 202):
        raise SystemExit(f"PUT {a.db}: {st} {body[:200]!r}")
    docs = []
    for f in day_files(a.day):
        for did, _rev, line in rows(f):
            d = clean_body(row_doc(line))
            d["_id"] = did
            docs.append(d)
    n = len(docs)
    log(f"load: {n} documents from {a.day}")
    t0 = time.monotonic()
    res, errs = post_batches(c, db=a.db, batches=chunks(docs, a.batch), conc=a.conc)
    secs = time.monotonic() - t0
    if errs:
        raise SystemExit(f"load: {len(errs)} errors, e.g. {errs[:3]}")
    log(f"load: {n} docs in {secs:.1f} s ({n / secs:.0f} docs/s, _bulk_docs batch {a.batch} x {a.conc})")

    # design documents
    _, errs = post_batches(c, a.db, [DESIGN_DOCS], 1)
    if errs:
        raise SystemExit(f"design docs: {errs}")

    # tombstones: short-lived documents (sessions, drafts) created and deleted
    nt = int(n * a.tombstones)
    tmp = [{"_id": hexid(rng), "type": "draft", "user": rng.randint(1, 40000),
            "created": "2025-02-%02dT10:00:00Z" % rng.randint(1, 28), "text": "x" * rng.randint(50, 400)}
           for _ in range(nt)]
    res_t, errs = post_batches(c, a.db, chunks(tmp, 1000), 2)
    if errs:
        raise SystemExit(f"tombstones: {errs[:3]}")
    dels = [{"_id": r["id"], "_rev": r["rev"], "_deleted": True} for r in res_t]
    _, errs = post_batches(c, a.db, chunks(dels, 1000), 2)
    if errs:
        raise SystemExit(f"tombstones: {errs[:3]}")

    # conflicts
    nc = int(n * a.conflicts)
    pick = rng.sample(range(n), nc)
    targets = [(docs[i]["_id"], 1, None, {k: v for k, v in docs[i].items() if k != "_id"}) for i in pick]
    ncf = make_conflicts(c, a.db, targets, rng, "initial")
    info = c.json("GET", q(a.db))
    print(json.dumps({"docs": n, "secs": round(secs, 3), "batch": a.batch, "conc": a.conc,
                      "design_docs": len(DESIGN_DOCS), "tombstones": nt, "conflicts": ncf,
                      "doc_count": info.get("doc_count"), "update_seq": info.get("update_seq")}))


def current_revs(c, db, ids):
    out = {}
    for ch in chunks(ids, 1000):
        r = c.json("POST", q(db) + "/_all_docs", {"keys": ch})
        for row in r["rows"]:
            if "value" in row and not row["value"].get("deleted"):
                out[row["id"]] = row["value"]["rev"]
    return out


def cmd_day(a):
    c = Couch(a.url)
    rng = random.Random(f"{a.seed}:{a.cur}")
    prev = {}
    for f in day_files(a.prev):
        for did, rev, _ in rows(f):
            prev[did] = rev
    upd, ins, seen = [], [], set()
    for f in day_files(a.cur):
        for did, rev, line in rows(f):
            seen.add(did)
            p = prev.get(did)
            if p is None:
                ins.append((did, line))
            elif p != rev:
                upd.append((did, line))
    dels = [d for d in prev if d not in seen]
    t0 = time.monotonic()
    cur = current_revs(c, a.db, [d for d, _ in upd] + dels)
    docs, upd_bodies = [], []
    for did, line in upd:
        if did not in cur:
            continue
        d = clean_body(row_doc(line))
        upd_bodies.append((did, d))
        d = dict(d, _id=did, _rev=cur[did])
        docs.append(d)
    for did, line in ins:
        d = clean_body(row_doc(line))
        d["_id"] = did
        docs.append(d)
    for did in dels:
        if did in cur:
            docs.append({"_id": did, "_rev": cur[did], "_deleted": True})
    res, errs = post_batches(c, a.db, chunks(docs, 1000), 2)
    if errs:
        raise SystemExit(f"day: {len(errs)} errors, e.g. {errs[:3]}")
    newrev = {r["id"]: r["rev"] for r in res}
    # a few replication conflicts among today's updates
    nc = int(len(prev) * a.conflicts)
    pick = rng.sample(upd_bodies, min(nc, len(upd_bodies)))
    targets = [(did, int(newrev[did].split("-")[0]), cur[did].split("-", 1)[1], b) for did, b in pick if did in newrev]
    ncf = make_conflicts(c, a.db, targets, rng, "day")
    secs = time.monotonic() - t0
    info = c.json("GET", q(a.db))
    print(json.dumps({"updated": len(upd_bodies), "inserted": len(ins), "deleted": len(dels),
                      "conflicts": ncf, "secs": round(secs, 3), "docs_before": len(prev),
                      "changed_frac": round((len(upd_bodies) + len(ins) + len(dels)) / max(1, len(prev)), 4),
                      "doc_count": info.get("doc_count"), "update_seq": info.get("update_seq")}))


# ---------------------------------------------------------------- server limits

def all_leaves(c, db):
    """_changes?style=all_docs: [(id, [leaf revs], deleted)], and the time it took."""
    t0 = time.monotonic()
    st, data = c.raw("GET", q(db) + "/_changes?style=all_docs&since=0")
    secs = time.monotonic() - t0
    if st != 200:
        raise SystemExit(f"_changes: {st}")
    out = [(r["id"], [x["rev"] for x in r["changes"]], bool(r.get("deleted"))) for r in json.loads(data)["results"]]
    return out, secs, len(data)


def cmd_limits(a):
    c = Couch(a.url)
    figures = {"read": [], "ingest": []}
    # read limit: _changes?style=all_docs, then _bulk_get?revs=true with explicit revs
    leaves = None
    best_bodies = None
    for conc in [int(x) for x in a.read_concs.split(",")]:
        leaves, ch_secs, ch_bytes = all_leaves(c, a.db)
        reqs = chunks([{"id": i, "rev": r} for i, revs, _ in leaves for r in revs], a.read_batch)
        bodies = [json.dumps({"docs": r}, separators=(",", ":")).encode() for r in reqs]

        def get(b):
            st, data = c.raw("POST", q(a.db) + "/_bulk_get?revs=true", b)
            if st != 200:
                raise SystemExit(f"_bulk_get: {st} {data[:200]!r}")
            return data

        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(conc) as ex:
            out = list(ex.map(get, bodies))
        bg_secs = time.monotonic() - t0
        nbytes = sum(len(x) for x in out)
        n_leaves = sum(len(r) for r in reqs)
        rec = {"conc": conc, "batch": a.read_batch, "ids": len(leaves), "leaves": n_leaves,
               "changes_secs": round(ch_secs, 3), "bulk_get_secs": round(bg_secs, 3),
               "secs": round(ch_secs + bg_secs, 3), "bytes": nbytes + ch_bytes}
        log(f"read limit: conc {conc}: {len(leaves)} ids, {n_leaves} leaves in {ch_secs:.2f} + {bg_secs:.2f} s")
        figures["read"].append(rec)
        best_bodies = out
    # the documents for the ingest test: every leaf with _revisions, as read above
    docs = []
    for data in best_bodies:
        for r in json.loads(data)["results"]:
            for d in r["docs"]:
                if "ok" in d:
                    docs.append(d["ok"])
    n = len(docs)
    n_ids = len({d["_id"] for d in docs})
    log(f"ingest limit: {n} leaf revisions of {n_ids} ids")
    for batch in [int(x) for x in a.batches.split(",")]:
        bodies = [
            b'{"new_edits":false,"docs":[' + b",".join(json.dumps(d, separators=(",", ":")).encode() for d in ch) + b"]}"
            for ch in chunks(docs, batch)
        ]
        for conc in [int(x) for x in a.concs.split(",")]:
            tdb = a.db + "_limit_ingest"
            c.raw("DELETE", q(tdb))
            st, body = c.raw("PUT", q(tdb))
            if st not in (201, 202):
                raise SystemExit(f"PUT {tdb}: {st} {body[:200]!r}")

            def put(b):
                st, data = c.raw("POST", q(tdb) + "/_bulk_docs", b)
                if st not in (201, 202) or data.strip() != b"[]":
                    raise SystemExit(f"_bulk_docs new_edits=false: {st} {data[:300]!r}")

            t0 = time.monotonic()
            with cf.ThreadPoolExecutor(conc) as ex:
                list(ex.map(put, bodies))
            secs = time.monotonic() - t0
            info = c.json("GET", q(tdb))
            c.raw("DELETE", q(tdb))
            rec = {"batch": batch, "conc": conc, "leaves": n, "ids": n_ids, "secs": round(secs, 3),
                   "bytes": sum(len(b) for b in bodies), "doc_count": info.get("doc_count")}
            log(f"ingest limit: batch {batch} x {conc}: {secs:.2f} s ({n / secs:.0f} leaves/s), doc_count {info.get('doc_count')}")
            figures["ingest"].append(rec)
    print(json.dumps(figures))


# ---------------------------------------------------------------- comparison

def leaf_map(c, db):
    leaves, _, _ = all_leaves(c, db)
    return {i: (tuple(sorted(r)), d) for i, r, d in leaves}


def summarize(m, c, db):
    info = c.json("GET", q(db))
    return {"ids": len(m), "leaves": sum(len(r) for r, _ in m.values()),
            "deleted_ids": sum(1 for _, d in m.values() if d),
            "conflicted_ids": sum(1 for r, d in m.values() if len(r) > 1),
            "design_ids": sum(1 for i in m if i.startswith("_design/")),
            "doc_count": info.get("doc_count")}


def cmd_compare(a):
    c = Couch(a.url)
    s, t = leaf_map(c, a.db), leaf_map(c, a.db2)
    missing = [i for i in s if i not in t]
    extra = [i for i in t if i not in s]
    differ = [i for i in s if i in t and s[i] != t[i]]
    missing_live = [i for i in missing if not s[i][1]]
    missing_del = [i for i in missing if s[i][1]]
    # winners' bodies (incl. _rev) on a sample of live ids
    rng = random.Random(7)
    live = [i for i in s if not s[i][1] and i in t]
    sample = rng.sample(live, min(a.sample, len(live)))
    body_diff = 0
    for ch in chunks(sample, 500):
        x = c.json("POST", q(a.db) + "/_all_docs?include_docs=true", {"keys": ch})["rows"]
        y = c.json("POST", q(a.db2) + "/_all_docs?include_docs=true", {"keys": ch})["rows"]
        for rx, ry in zip(x, y):
            if rx.get("doc") != ry.get("doc"):
                body_diff += 1
    out = {"source": summarize(s, c, a.db), "target": summarize(t, c, a.db2),
           "missing_ids": len(missing), "missing_live_ids": len(missing_live),
           "missing_deleted_ids": len(missing_del), "extra_ids": len(extra),
           "differing_leaf_sets": len(differ),
           "differing_conflicted": sum(1 for i in differ if len(s[i][0]) > 1),
           "sampled_winners": len(sample), "sampled_winner_body_diffs": body_diff}
    out["identical"] = not (missing or extra or differ or body_diff)
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--url", required=True)
        p.add_argument("--db", required=True)
        p.add_argument("--seed", default="1")

    p = sp.add_parser("info"); common(p); p.set_defaults(f=cmd_info)
    p = sp.add_parser("load"); common(p)
    p.add_argument("--day", required=True)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--conc", type=int, default=2)
    p.add_argument("--tombstones", type=float, default=0.01)
    p.add_argument("--conflicts", type=float, default=0.002)
    p.set_defaults(f=cmd_load)
    p = sp.add_parser("day"); common(p)
    p.add_argument("--prev", required=True)
    p.add_argument("--cur", required=True)
    p.add_argument("--conflicts", type=float, default=0.0002)
    p.set_defaults(f=cmd_day)
    p = sp.add_parser("limits"); common(p)
    p.add_argument("--read-concs", default="1,2,4")
    p.add_argument("--read-batch", type=int, default=500)
    p.add_argument("--batches", default="500,1000,2000")
    p.add_argument("--concs", default="1,2,4")
    p.set_defaults(f=cmd_limits)
    p = sp.add_parser("compare"); common(p)
    p.add_argument("--db2", required=True)
    p.add_argument("--sample", type=int, default=2000)
    p.set_defaults(f=cmd_compare)
    a = ap.parse_args()
    a.f(a)


if __name__ == "__main__":
    main()
