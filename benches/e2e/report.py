#!/usr/bin/env python3
"""Turns compare.sh's records (logs/records.jsonl, one JSON object a line) into
results.json (every measurement plus the summary) and results.md (tables).

Usage: report.py RECORDS.jsonl --json results.json --md results.md

MB = 10^6 bytes, MiB = 2^20 bytes. Throughput = bytes / wall time, where the bytes are the
day's input (backup, restore) or the repository's size (check/verify).
"""

import argparse
import json
import statistics

TOOL_ORDER = ["cairn", "cairn-v1", "restic", "borg", "rustic", "bupstash"]


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def mbps(m):
    return m["bytes"] / 1e6 / m["wall_s"] if m and m["wall_s"] > 0 else None


def cpu(m):
    return m["user_s"] + m["sys_s"] if m else None


def summarize(records):
    meta = next((r for r in records if r["kind"] == "meta"), {})
    tools = meta.get("tools") or sorted({r["tool"] for r in records if "tool" in r},
                                        key=lambda t: TOOL_ORDER.index(t) if t in TOOL_ORDER else 99)
    inputs = {r["day"]: r for r in records if r["kind"] == "input"}
    last_day = max(inputs) if inputs else 0
    meas = [r for r in records if r["kind"] == "measure"]
    summary = {}
    for t in tools:
        ok = [m for m in meas if m["tool"] == t and m["exit"] == 0]
        def one(op, day):
            # Repeated (restores of the last day): the run of median wall time.
            runs = sorted((m for m in ok if m["op"] == op and m["day"] == day), key=lambda m: m["wall_s"])
            return runs[(len(runs) - 1) // 2] if runs else None
        backups = [m for m in ok if m["op"] == "backup"]
        first = one("backup", 1)
        incr = [m for m in backups if m["day"] >= 2]
        sizes = {r["day"]: r["bytes"] for r in records if r["kind"] == "repo_size" and r["tool"] == t}
        restores = {d: one("restore", d) for d in sorted({1, last_day})}
        checks = {d: one("check", d) for d in sorted({1, last_day})}
        rchk = {r["day"]: r["identical"] for r in records if r["kind"] == "restore_check" and r["tool"] == t}
        summary[t] = {
            "version": next((r["version"] for r in records if r["kind"] == "version" and r["tool"] == t), None),
            "first_backup_mb_s": mbps(first),
            "first_backup_wall_s": first["wall_s"] if first else None,
            "first_backup_cpu_s": cpu(first),
            "incr_backup_mb_s_mean": statistics.mean(mbps(m) for m in incr) if incr else None,
            "incr_backup_wall_s_mean": statistics.mean(m["wall_s"] for m in incr) if incr else None,
            "incr_backup_cpu_s_mean": statistics.mean(cpu(m) for m in incr) if incr else None,
            "incr_days": len(incr),
            "peak_rss_kib": max((m["max_rss_kib"] for m in backups), default=None),
            "peak_rss_kib_any_op": max((m["max_rss_kib"] for m in ok), default=None),
            "repo_bytes_by_day": sizes,
            "repo_bytes_final": sizes.get(last_day),
            "restore_mb_s": {d: mbps(m) for d, m in restores.items()},
            "restore_wall_s": {d: (m["wall_s"] if m else None) for d, m in restores.items()},
            "restore_identical": rchk,
            "check_mb_s": {d: mbps(m) for d, m in checks.items()},
            "check_wall_s": {d: (m["wall_s"] if m else None) for d, m in checks.items()},
            "failures": [r["what"] for r in records if r["kind"] == "failure" and r["tool"] == t],
        }
    ratios = {}
    base = summary.get("restic")
    if base:
        def ratio(a, b):
            return a / b if a is not None and b not in (None, 0) else None
        for t in tools:
            if t == "restic":
                continue
            s = summary[t]
            ratios[t] = {
                "first_backup_throughput": ratio(s["first_backup_mb_s"], base["first_backup_mb_s"]),
                "incr_backup_throughput": ratio(s["incr_backup_mb_s_mean"], base["incr_backup_mb_s_mean"]),
                "restore_throughput": ratio(base["restore_wall_s"].get(last_day), s["restore_wall_s"].get(last_day)),
                "verify_throughput": ratio(base["check_wall_s"].get(last_day), s["check_wall_s"].get(last_day)),
                "peak_rss": ratio(s["peak_rss_kib"], base["peak_rss_kib"]),
                "final_repo_size": ratio(s["repo_bytes_final"], base["repo_bytes_final"]),
            }
    return meta, tools, inputs, last_day, summary, ratios


def fmt(x, nd=1):
    return "–" if x is None else f"{x:,.{nd}f}"


def markdown(meta, tools, inputs, last_day, summary, ratios, records):
    L = []
    L.append("# Cairn end-to-end comparison\n")
    total_in = sum(r["bytes"] for r in inputs.values())
    L.append(f"{len(inputs)} days, {fmt(inputs[1]['bytes'] / 1e6 if 1 in inputs else None)} MB on day 1, "
             f"{fmt(total_in / 1e6)} MB backed up in total; tools run one at a time in the order "
             f"{', '.join(tools)}; {meta.get('cpus', '?')} CPUs, {fmt(meta.get('mem_kib', 0) / 2**20)} GiB RAM, "
             f"{meta.get('host', '?')}, started {meta.get('started', '?')}. "
             + ("Page cache dropped before every measured command."
                if meta.get("drop_caches") else
                "Input read once before every backup (warm page cache for every tool); `sync` before every measured command.")
             + "\n")
    L.append("Versions: " + "; ".join(f"{t}: `{summary[t]['version']}`" for t in tools) + "\n")
    L.append("MB = 10^6 bytes. Throughput = input bytes / wall time (check/verify: repository bytes / wall time). "
             "CPU = user + sys. Incremental = mean over days 2..N. Restore and check are run on day 1 and "
             f"on the last day (day {last_day})"
             + (f"; the last day is restored {meta['restore_reps']} times per tool, the tools taking turns, "
                "and the run of median wall time is reported" if meta.get("restore_reps", 1) > 1 else "")
             + ".\n")

    L.append("## Per tool\n")
    L.append("| tool | first backup MB/s | first backup CPU s | incr. backup MB/s | incr. backup CPU s | "
             "peak RSS MiB (backups) | repo after last day MB | restore MB/s (day 1 / last) | "
             "check MB/s (day 1 / last) | restored tree identical |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for t in tools:
        s = summary[t]
        r, c = s["restore_mb_s"], s["check_mb_s"]
        ident = ", ".join(f"day {d}: {'yes' if v else 'NO'}" for d, v in sorted(s["restore_identical"].items())) or "–"
        L.append(f"| {t} | {fmt(s['first_backup_mb_s'])} | {fmt(s['first_backup_cpu_s'], 2)} | "
                 f"{fmt(s['incr_backup_mb_s_mean'])} | {fmt(s['incr_backup_cpu_s_mean'], 2)} | "
                 f"{fmt(s['peak_rss_kib'] / 1024 if s['peak_rss_kib'] else None)} | "
                 f"{fmt(s['repo_bytes_final'] / 1e6 if s['repo_bytes_final'] else None)} | "
                 f"{fmt(r.get(1))} / {fmt(r.get(last_day))} | {fmt(c.get(1))} / {fmt(c.get(last_day))} | {ident} |")
    L.append("")

    if ratios:
        L.append("## Ratios vs restic\n")
        L.append("Throughput ratios > 1 mean faster than restic (restore and verify: restic's wall time / the "
                 "tool's, last day); peak RSS and repository size < 1 mean smaller.\n")
        others = list(ratios)
        L.append("| metric | " + " | ".join(f"{t}/restic" for t in others) + " |")
        L.append("|---|" + "---:|" * len(others))
        for key, label in [("first_backup_throughput", "first-backup throughput"),
                           ("incr_backup_throughput", "incremental-backup throughput"),
                           ("restore_throughput", "restore throughput"),
                           ("verify_throughput", "verify (full data check) throughput"),
                           ("peak_rss", "peak RSS"),
                           ("final_repo_size", "final repository size")]:
            L.append(f"| {label} | " + " | ".join(fmt(ratios[t][key], 2) for t in others) + " |")
        L.append("")

    L.append("## Repository size after each day (MB)\n")
    L.append("| day | input MB | " + " | ".join(tools) + " |")
    L.append("|---:|---:|" + "---:|" * len(tools))
    for d in sorted(inputs):
        L.append(f"| {d} | {fmt(inputs[d]['bytes'] / 1e6)} | " + " | ".join(
            fmt(summary[t]["repo_bytes_by_day"].get(d, 0) / 1e6 if d in summary[t]["repo_bytes_by_day"] else None)
            for t in tools) + " |")
    L.append("")

    L.append("## Backup per day: wall s / CPU s / max RSS MiB\n")
    L.append("| day | " + " | ".join(tools) + " |")
    L.append("|---:|" + "---|" * len(tools))
    for d in sorted(inputs):
        cells = []
        for t in tools:
            m = next((m for m in records if m["kind"] == "measure" and m["tool"] == t
                      and m["op"] == "backup" and m["day"] == d), None)
            cells.append("–" if not m else
                         f"{m['wall_s']:.2f} / {cpu(m):.2f} / {m['max_rss_kib'] / 1024:.0f}" + ("" if m["exit"] == 0 else " FAILED"))
        L.append(f"| {d} | " + " | ".join(cells) + " |")
    L.append("")

    fails = [(t, what) for t in tools for what in summary[t]["failures"]]
    if fails:
        L.append("## Failures\n")
        L.append("A failed init or backup stops that tool for the rest of the run; a failed restore or "
                 "check is recorded and the run goes on.\n")
        for t, what in fails:
            L.append(f"- **{t}**: {what}")
        L.append("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records")
    ap.add_argument("--json", required=True)
    ap.add_argument("--md", required=True)
    a = ap.parse_args()
    records = load(a.records)
    meta, tools, inputs, last_day, summary, ratios = summarize(records)
    with open(a.json, "w") as f:
        json.dump({"meta": meta, "tools": tools, "inputs": list(inputs.values()), "summary": summary,
                   "ratios_vs_restic": ratios,
                   "measurements": [r for r in records if r["kind"] not in ("meta",)]}, f, indent=1)
        f.write("\n")
    with open(a.md, "w") as f:
        f.write(markdown(meta, tools, inputs, last_day, summary, ratios, records))


if __name__ == "__main__":
    main()
