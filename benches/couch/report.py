#!/usr/bin/env python3
"""Turns benches/couch/run.sh's records.jsonl into the Markdown results table (stdout)."""

import json
import statistics
import os
import sys


def load(path):
    recs = [json.loads(l) for l in open(path) if l.strip()]
    by = {}
    for r in recs:
        by.setdefault(r["kind"], []).append(r)
    return by


def mb(b):
    return "–" if b is None else f"{b / 1e6:,.1f} MB"


def kib_mb(k, suffix=""):
    return "–" if not k else f"{k / 1024:,.0f} MB{suffix}"


def rate(n, s):
    return None if not s or n is None else n / s


def fr(x, digits=0):
    return "–" if x is None else f"{x:,.{digits}f}"


def ratio(a, b, digits=2):
    return "–" if a is None or b in (None, 0) else f"{a / b:.{digits}f}"


def main():
    by = load(sys.argv[1])
    env = by["env"][0]
    out = []
    w = out.append
    w(f"# CouchDB backup/restore benchmark, {env['date'][:10]}")
    w("")
    w(f"Cairn ({env.get('cairn') or 'not run'}) vs @cloudant/couchbackup {env['couchbackup']} "
      f"(`couchbackup --mode full` / `couchrestore`, defaults: 500 docs per request, 5 in flight; "
      f"Cairn's restore with `--requests 2`, see run.sh) "
      f"on one pouchdb-server 4.2.0 (patched for couchbackup, storage: "
      f"{'LevelDB on disk' if env['storage'] == 'dir' else 'in memory'}), {env['cpus']} CPUs "
      f"{'split: the server on CPU 0, every client on CPU 1 (as on separate machines)' if env.get('pinned') else 'shared by server and client'}"
      f", Node {env['node']}. Produced by `benches/couch/run.sh --only {env['only']} "
      f"--docs {env['docs_target']} --days {env['days']} --storage {env['storage']}"
      f"{' --pin' if env.get('pinned') else ''}`.")
    w("")
    w("docs/s = the database's `doc_count` (live documents) divided by the wall time. RSS = peak "
      "resident set of the tool's process (`/usr/bin/time` %M).")
    w("")

    ld = by.get("load", [{}])[0]
    w("## Data")
    w("")
    w(f"* Initial load: {ld.get('docs', 0):,} Open edX-like documents from `cairn-workload couchdb` "
      f"(five databases merged into one; random 32-hex ids; ~0.6–3 KB bodies, a few up to 26 KB), "
      f"`_bulk_docs` (normal edits) {ld.get('batch')} per request × {ld.get('conc')} in flight: "
      f"{fr(ld.get('secs'), 1)} s ({fr(rate(ld.get('docs'), ld.get('secs')))} docs/s). Plus "
      f"{ld.get('design_docs')} design documents with views, {ld.get('tombstones', 0):,} created-then-deleted "
      f"documents (tombstones) and {ld.get('conflicts', 0):,} conflicting sibling revisions (`new_edits:false`).")
    w("* Each day: the workload's next state applied through `_bulk_docs` (updates with the current "
      "`_rev`, new documents, deletions), plus a few replication-style conflicts on updated documents.")
    w("")
    w("| day | updated | inserted | deleted | conflicts added | changed | doc_count | update_seq |")
    w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in by.get("churn", []):
        w(f"| {c['day']} | {c['updated']:,} | {c['inserted']:,} | {c['deleted']:,} | {c['conflicts']} | "
          f"{c['changed_frac'] * 100:.2f} % | {c['doc_count']:,} | {c['update_seq']:,} |")
    w("")

    bk = {}
    for b in by.get("backup", []):
        bk.setdefault(b["day"], {})[b["tool"]] = b
    w("## Backups (after each day)")
    w("")
    w("| day | docs | couchbackup s | docs/s | RSS | output | Cairn s | docs/s | RSS | repo growth | Cairn/couchbackup time |")
    w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    tot = {"couchbackup": [0.0, 0, 0, 0], "cairn": [0.0, 0, 0, 0]}
    for day in sorted(bk):
        p, c = bk[day].get("couchbackup"), bk[day].get("cairn")
        docs = (p or c)["docs"]
        cells = [str(day), f"{docs:,}"]
        for t, r in (("couchbackup", p), ("cairn", c)):
            if r is None:
                cells += ["–"] * 4
            elif r["rc"] != 0:
                cells += [f"failed (rc {r['rc']})", "–", "–", "–"]
            else:
                cells += [fr(r["secs"], 2), fr(rate(docs, r["secs"])), kib_mb(r["rss_kb"]), mb(r["bytes"])]
                tot[t][0] += r["secs"]
                tot[t][1] += docs
                tot[t][2] = max(tot[t][2], r["rss_kb"])
                tot[t][3] += r["bytes"]
        ok = p and c and p["rc"] == 0 and c["rc"] == 0
        cells.append(ratio(c["secs"], p["secs"]) if ok else "–")
        w("| " + " | ".join(cells) + " |")
    # Cairn's own account of each backup (its --json output, kept in logs/)
    logs = os.path.join(os.path.dirname(os.path.abspath(sys.argv[1])), "logs")
    notes = []
    for day in sorted(bk):
        try:
            j = json.load(open(os.path.join(logs, f"cairn-backup-day{day}.json")))
            d = j["databases"][0]
            notes.append(f"day {day}: {d.get('fetched_leaves', 0):,} fetched / {d.get('reused_leaves', 0):,} reused, "
                         f"{j.get('requests', 0):,} requests")
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            pass
    tp, tc = tot["couchbackup"], tot["cairn"]
    w(f"| all | {max(tp[1], tc[1]):,} | {fr(tp[0], 1) if tp[0] else '–'} | {fr(rate(tp[1], tp[0]))} | "
      f"{kib_mb(tp[2], ' (max)')} | {mb(tp[3]) if tp[3] else '–'} | {fr(tc[0], 1) if tc[0] else '–'} | "
      f"{fr(rate(tc[1], tc[0]))} | {kib_mb(tc[2], ' (max)')} | {mb(tc[3]) if tc[3] else '–'} | "
      f"{ratio(tc[0], tp[0]) if tp[0] and tc[0] else '–'} |")
    w("")
    if notes:
        w("Cairn's backups are incremental (leaf revisions fetched from the server vs reused from the "
          "previous snapshot, from its `--json`): " + "; ".join(notes) + ". couchbackup fetches every "
          "document every time.")
        w("")

    sz = by.get("sizes", [None])[0]
    if sz:
        w(f"## Storage for the {sz['days']} daily backups")
        w("")
        w("| what | bytes | Cairn repository / this |")
        w("| --- | ---: | ---: |")
        repo = sz.get("cairn_repo")
        z19 = ("couchbackup files, each `zstd -19`" if sz.get("zstd19_mode", "all") == "all" else
               "couchbackup files, each `zstd -19` (estimate: the last day's file's -19 ratio applied to all)")
        for label, key in (("couchbackup files, raw", "peer_raw"), ("couchbackup files, each `zstd -3`", "peer_zstd3"),
                           (z19, "peer_zstd19")):
            v = sz.get(key)
            if v:
                w(f"| {label} | {v:,} ({mb(v)}) | {ratio(repo, v, 3)} |")
        w(f"| Cairn repository (`du -sb`) | {'–' if repo is None else f'{repo:,} ({mb(repo)})'} | |")
        w("")

    rs = {r["tool"]: r for r in by.get("restore", [])}
    lim = by.get("limits", [None])[0]
    best_read = best_ingest = None
    if lim:
        best_read = min(lim["read"], key=lambda r: r["secs"]) if lim["read"] else None
        best_ingest = min(lim["ingest"], key=lambda r: r["secs"]) if lim["ingest"] else None
    if rs:
        w("## Restore of the last day into a new, empty database")
        w("")
        w("| tool | docs | s | docs/s | RSS | ids / leaves restored (source) | tombstones | conflicted ids | winners sampled, differing |")
        w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for t in ("couchrestore", "cairn"):
            r = rs.get(t)
            if not r:
                continue
            cm = r.get("compare") or {}
            s, d = cm.get("source", {}), cm.get("target", {})
            if r["rc"] != 0:
                w(f"| {t} | {r['docs']:,} | failed (rc {r['rc']}) | – | – | – | – | – | – |")
                continue
            w(f"| {t} | {r['docs']:,} | {fr(r['secs'], 2)} | {fr(rate(r['docs'], r['secs']))} | {kib_mb(r['rss_kb'])} | "
              f"{fr(d.get('ids'))} / {fr(d.get('leaves'))} ({fr(s.get('ids'))} / {fr(s.get('leaves'))}) | "
              f"{fr(d.get('deleted_ids'))} ({fr(s.get('deleted_ids'))}) | {fr(d.get('conflicted_ids'))} ({fr(s.get('conflicted_ids'))}) | "
              f"{fr(cm.get('sampled_winners'))}, {fr(cm.get('sampled_winner_body_diffs'))} |")
        w("")
        if "cairn" in rs:
            w("Cairn's restore time includes its own verification of the restored database against the "
              "snapshot (every leaf confirmed: one live leaf as the winner listed by `_all_docs`, the rest asked for with `_revs_diff`; document counts compared); couchrestore does no such check. The "
              "comparison columns are the benchmark's own check, run afterwards for both.")
            w("")

    if lim:
        n = lim["docs"]
        w("## The server's own limits (same server, last day's database)")
        w("")
        w("Read: `GET _changes?style=all_docs` once, then `POST _bulk_get?revs=true` naming every leaf "
          f"revision ({lim['read'][0]['batch'] if lim['read'] else 500} per request), responses read but not parsed. "
          "Ingest: every leaf revision so read (with `_rev` and `_revisions`), "
          "`POST _bulk_docs {\"new_edits\":false}` into a new database, bodies prepared in advance. "
          "Client: Python threads on the same 2 CPUs.")
        w("")
        w("| test | per request | in flight | leaves | s | docs/s (doc_count) | leaves/s |")
        w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in lim["read"]:
            w(f"| read | {r['batch']} | {r['conc']} | {r['leaves']:,} | {r['changes_secs']:.2f} + {r['bulk_get_secs']:.2f} | "
              f"{fr(rate(n, r['secs']))} | {fr(rate(r['leaves'], r['secs']))} |")
        for r in lim["ingest"]:
            w(f"| ingest | {r['batch']} | {r['conc']} | {r['leaves']:,} | {r['secs']:.2f} | "
              f"{fr(rate(n, r['secs']))} | {fr(rate(r['leaves'], r['secs']))} |")
        w("")

    # ratios
    last = bk[max(bk)] if bk else {}
    w("## Ratios")
    w("")
    w("| figure | value |")
    w("| --- | ---: |")

    def row(label, v):
        w(f"| {label} | {v} |")

    p, c = last.get("couchbackup"), last.get("cairn")
    okp = p and p["rc"] == 0
    okc = c and c["rc"] == 0
    if okp and okc:
        row(f"backup time, last day, Cairn / couchbackup", ratio(c["secs"], p["secs"]))
        row("backup time, all days, Cairn / couchbackup", ratio(tc[0], tp[0]))
        row("backup peak RSS (max over days), Cairn / couchbackup", ratio(tc[2], tp[2]))
    if sz and sz.get("cairn_repo") and sz.get("peer_zstd3"):
        row("storage, Cairn repository / couchbackup files each zstd -3", ratio(sz["cairn_repo"], sz["peer_zstd3"], 3))
        if sz.get("peer_zstd19"):
            row("storage, Cairn repository / couchbackup files each zstd -19"
                + ("" if sz.get("zstd19_mode", "all") == "all" else " (estimate)"), ratio(sz["cairn_repo"], sz["peer_zstd19"], 3))
    rp, rc = rs.get("couchrestore"), rs.get("cairn")
    if rp and rc and rp["rc"] == 0 and rc["rc"] == 0:
        row("restore time, Cairn / couchrestore", ratio(rc["secs"], rp["secs"]))
        row("restore peak RSS, Cairn / couchrestore", ratio(rc["rss_kb"], rp["rss_kb"]))
    def against(label, limit_docs, limit_secs, tools, what):
        """The limit's row, then each tool's docs/s as a share of it."""
        row(label, fr(rate(limit_docs, limit_secs)))
        for t, r in tools:
            if r and r["rc"] == 0:
                row(f"{t} / {what}, in docs/s", ratio(rate(r["docs"], r["secs"]), rate(limit_docs, limit_secs)))
    backups = (("couchbackup backup (last day)", p), ("Cairn backup (last day)", c))
    restores = (("couchrestore", rp), ("Cairn restore", rc))
    if best_read:
        against(f"server read limit (best: {best_read['conc']} in flight), docs/s",
                lim["docs"], best_read["secs"], backups, "server read limit")
    if best_ingest:
        against(f"server ingest limit (best: {best_ingest['batch']} per request × {best_ingest['conc']}), docs/s",
                lim["docs"], best_ingest["secs"], restores, "server ingest limit")
    pre = by.get("limits_before", [None])[0]
    if pre and pre.get("read"):
        against("server read limit measured right before the last day's backups (2 in flight), docs/s",
                pre["docs"], pre["read"][0]["secs"], backups, "that read limit")
    if pre and pre.get("ingest"):
        i0 = pre["ingest"][0]
        against(f"server ingest limit measured before the backups and restores ({i0['batch']} per request × {i0['conc']}), docs/s",
                pre["docs"], i0["secs"], restores, "that ingest limit")
    pairs = [x for x in by.get("pair", []) if x["backup_rc"] == 0 and x["restore_rc"] == 0
             and x.get("read") and x.get("ingest")]
    if pairs:
        rb = [x["read"][0]["secs"] / x["backup_secs"] for x in pairs]
        ri = [x["ingest"][0]["secs"] / x["restore_secs"] for x in pairs]
        row(f"paired runs ({len(pairs)}): Cairn first backup / read limit measured beside it, in docs/s, median",
            f"{statistics.median(rb):.2f} ({', '.join(f'{v:.2f}' for v in rb)})")
        row(f"paired runs ({len(pairs)}): Cairn restore / ingest limit measured beside it, in docs/s, median",
            f"{statistics.median(ri):.2f} ({', '.join(f'{v:.2f}' for v in ri)})")
    ld = by.get("load", [{}])[0]
    if best_ingest and ld.get("secs"):
        row("initial load with normal edits / server ingest limit (new_edits:false), in docs/s",
            ratio(rate(ld["docs"], ld["secs"]), rate(lim["docs"], best_ingest["secs"])))
    w("")
    if best_read:
        w(f"The read limit is a full read of every leaf revision; "
          f"`_changes?style=all_docs` alone took {best_read['changes_secs']:.1f} s of its {best_read['secs']:.1f} s "
          "on this server."
          + (" A backup that fetches only what changed (Cairn after day 1) can beat it; its floor is "
             "that one `_changes` enumeration. Cairn's restore also restores the tombstones and "
             "conflicting revisions couchbackup drops, and its time includes its verification pass."
             if c or rc else ""))
        w("")
    if by.get("pair"):
        w("## Paired runs")
        w("")
        w("The server's limits (read: 1 in flight; ingest: 500 per request × 1) and a first Cairn "
          "backup of the last day's database into a new repository, then its restore into a new "
          "database (`--requests 2`), back to back; odd pairs measure the limits first.")
        w("")
        w("| pair | read limit s | Cairn first backup s | backup / limit, docs/s | ingest limit s | Cairn restore s | restore / limit, docs/s |")
        w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for x in by["pair"]:
            rd, ig = x["read"][0], x["ingest"][0]
            okb, okr = x["backup_rc"] == 0, x["restore_rc"] == 0
            w(f"| {x['i']} | {rd['secs']:.2f} | {x['backup_secs'] if okb else 'failed'} | "
              f"{ratio(rd['secs'], x['backup_secs']) if okb else '–'} | {ig['secs']:.2f} | "
              f"{x['restore_secs'] if okr else 'failed'} | {ratio(ig['secs'], x['restore_secs']) if okr else '–'} |")
        w("")
    srv = by.get("server", [None])[0]
    tot_s = by.get("total", [{}])[0].get("secs")
    if srv:
        w(f"pouchdb-server: peak RSS {kib_mb(srv['hwm_kb'])}, data directory {mb(srv['db_dir_bytes'])} at the end.")
        w("")
    w(f"Whole run: {fr(tot_s)} s. Load average (1/5/15 min) at the start {env.get('loadavg_start', '?')}, "
      f"at the end {by.get('total', [{}])[0].get('loadavg_end', '?')}: other work on the 2 CPUs makes the figures noisy.")
    w("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
