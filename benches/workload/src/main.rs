//! `cairn-workload`: generates the end-to-end benchmark's input data, deterministically
//! from a seed. See `cairn-workload --help`.

mod couch;
mod json;
mod rng;
mod schemas;
mod text;
mod world;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use couch::Db;
use schemas::SCHEMAS;
use world::World;

const HELP: &str = "\
cairn-workload: deterministic benchmark data for Cairn's end-to-end comparison.

USAGE:
    cairn-workload couchdb --out DIR [--days N] [--seed S] [--scale F] [--jobs J] [--quiet]

COMMANDS:
    couchdb   Simulates an Open edX school's CouchDB (5 databases: course_progress, forum,
              grades_submissions, user_profiles, notes_bookmarks; ~400 MB per day at
              --scale 1) and writes, for each day,
                  DIR/dayNN/couchdb/<db>.json
              exactly as `curl 'http://host:5984/<db>/_all_docs?include_docs=true'`
              returns it from CouchDB 3 (rows sorted by id, \"\\r\\n\" between rows).
              Day 1 is the initial state; every later day updates 1-3 % of each
              database's documents (new rev, a few fields changed), inserts ~0.5 % and
              deletes ~0.05 %, all at random ids.

OPTIONS:
    --out DIR     output directory (created; existing dayNN/couchdb files are overwritten)
    --days N      number of days to write [default: 14]
    --seed S      random seed; the same seed, scale and days give identical bytes [default: 1]
    --scale F     multiplies document counts, e.g. 0.01 for a smoke run [default: 1.0]
    --jobs J      worker threads (one database at a time each) [default: CPU count]
    --quiet       no progress on stderr
    -h, --help    this help
";

#[derive(Debug)]
struct Args {
    out: PathBuf,
    days: u32,
    seed: u64,
    scale: f64,
    jobs: usize,
    quiet: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    match it.next().as_deref() {
        Some("couchdb") => {}
        Some("-h" | "--help") | None => return Ok(None),
        Some(other) => return Err(format!("unknown command `{other}` (try --help)")),
    }
    let mut out = None;
    let mut a = Args {
        out: PathBuf::new(),
        days: 14,
        seed: 1,
        scale: 1.0,
        jobs: std::thread::available_parallelism().map_or(2, usize::from),
        quiet: false,
    };
    while let Some(flag) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--out" => out = Some(PathBuf::from(val("--out")?)),
            "--days" => a.days = val("--days")?.parse().map_err(|e| format!("--days: {e}"))?,
            "--seed" => a.seed = val("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--scale" => {
                a.scale = val("--scale")?
                    .parse()
                    .map_err(|e| format!("--scale: {e}"))?
            }
            "--jobs" => a.jobs = val("--jobs")?.parse().map_err(|e| format!("--jobs: {e}"))?,
            "--quiet" => a.quiet = true,
            other => return Err(format!("unknown option `{other}` (try --help)")),
        }
    }
    a.out = out.ok_or("--out DIR is required")?;
    if a.days == 0 || a.days > 999 {
        return Err("--days must be 1..=999".into());
    }
    if !(a.scale.is_finite() && a.scale > 0.0 && a.scale <= 100.0) {
        return Err("--scale must be in (0, 100]".into());
    }
    a.jobs = a.jobs.max(1);
    Ok(Some(a))
}

fn day_dir(out: &std::path::Path, day: u32) -> PathBuf {
    out.join(format!("day{day:02}")).join("couchdb")
}

fn run(a: &Args) -> Result<(), String> {
    let t0 = Instant::now();
    for day in 1..=a.days {
        let d = day_dir(&a.out, day);
        std::fs::create_dir_all(&d).map_err(|e| format!("create {}: {e}", d.display()))?;
    }
    let world = World::new(a.seed, a.scale);
    let next = AtomicUsize::new(0);
    let totals = Mutex::new(vec![0u64; a.days as usize]);
    let failure: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..a.jobs.min(SCHEMAS.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(schema) = SCHEMAS.get(i) else { break };
                    let t = Instant::now();
                    let mut db = Db::new(&world, *schema, i as u64, a.seed, a.scale);
                    let mut bytes = 0u64;
                    for day in 1..=a.days {
                        if day > 1 {
                            db.advance();
                        }
                        let path = day_dir(&a.out, day).join(format!("{}.json", schema.name));
                        match db.write_file(&path) {
                            Ok(n) => {
                                bytes += n;
                                if let Ok(mut t) = totals.lock() {
                                    t[(day - 1) as usize] += n;
                                }
                            }
                            Err(e) => {
                                if let Ok(mut f) = failure.lock() {
                                    *f = Some(format!("write {}: {e}", path.display()));
                                }
                                return;
                            }
                        }
                    }
                    if !a.quiet {
                        eprintln!(
                            "  {:<20} {:>8} docs on day {:<3} {:>9.1} MB/day  {:>6.1} s",
                            schema.name,
                            db.docs.len(),
                            a.days,
                            bytes as f64 / f64::from(a.days) / 1e6,
                            t.elapsed().as_secs_f64()
                        );
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    if !a.quiet {
        let totals = totals.into_inner().unwrap_or_default();
        let all: u64 = totals.iter().sum();
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "couchdb: {} days, day01 {:.1} MB, day{:02} {:.1} MB, {:.2} GB written in {:.1} s ({:.0} MB/s)",
            a.days,
            totals.first().copied().unwrap_or(0) as f64 / 1e6,
            a.days,
            totals.last().copied().unwrap_or(0) as f64 / 1e6,
            all as f64 / 1e9,
            secs,
            all as f64 / 1e6 / secs.max(1e-9)
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)) {
        Ok(None) => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Ok(Some(a)) => match run(&a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cairn-workload: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("cairn-workload: {e}\n\n{HELP}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests;
