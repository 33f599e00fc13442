//! Unit tests of the generator as a whole: determinism, churn rates, output format.

use crate::couch::{Churn, DELETE_FRAC, Db, INSERT_FRAC, UPDATE_FRAC};
use crate::schemas::SCHEMAS;
use crate::world::World;
use crate::{Args, parse_args, run};
use std::collections::HashMap;

const SCALE: f64 = 0.05;

fn render(db: &Db<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    db.write_all_docs(&mut out).expect("write to Vec");
    out
}

/// Every day's bytes of one database, for `seed`.
fn days(seed: u64, schema: usize, n: u32) -> Vec<Vec<u8>> {
    let world = World::new(seed, SCALE);
    let mut db = Db::new(&world, SCHEMAS[schema], schema as u64, seed, SCALE);
    let mut v = vec![render(&db)];
    for _ in 1..n {
        db.advance();
        v.push(render(&db));
    }
    v
}

#[test]
fn same_seed_gives_identical_bytes() {
    for (i, schema) in SCHEMAS.iter().enumerate() {
        let a = days(7, i, 3);
        let b = days(7, i, 3);
        assert!(a == b, "{} differs between two runs", schema.name);
        let c = days(8, i, 3);
        assert_ne!(a[0], c[0], "{}: seed ignored", schema.name);
        assert_ne!(a[1], a[2], "{}: no churn", schema.name);
    }
}

#[test]
fn churn_fractions_land_in_range() {
    let world = World::new(3, SCALE);
    for (i, schema) in SCHEMAS.iter().enumerate() {
        let mut db = Db::new(&world, *schema, i as u64, 3, SCALE);
        for _ in 0..4 {
            let before: HashMap<[u8; 32], (u32, [u8; 32])> = db
                .docs
                .iter()
                .map(|d| (d.id, (d.rev_gen, d.rev_hash)))
                .collect();
            let n = before.len() as f64;
            let churn = db.advance();
            let mut seen = Churn::default();
            for d in &db.docs {
                match before.get(&d.id) {
                    None => {
                        seen.inserted += 1;
                        assert_eq!(d.rev_gen, 1);
                    }
                    Some(&(g, h)) if g != d.rev_gen => {
                        seen.updated += 1;
                        assert!(d.rev_gen > g, "rev generation must grow");
                        assert_ne!(h, d.rev_hash);
                    }
                    Some(&(_, h)) => assert_eq!(h, d.rev_hash),
                }
            }
            seen.deleted = before.len() + seen.inserted - db.docs.len();
            assert_eq!(
                seen, churn,
                "{}: reported churn differs from the data",
                schema.name
            );
            let within = |x: usize, (lo, hi): (f64, f64)| {
                (x as f64) >= (n * lo).floor() && (x as f64) <= (n * hi).ceil()
            };
            assert!(
                within(churn.updated, UPDATE_FRAC),
                "{}: {churn:?} of {n}",
                schema.name
            );
            assert!(
                within(churn.inserted, INSERT_FRAC),
                "{}: {churn:?} of {n}",
                schema.name
            );
            assert!(
                within(churn.deleted, DELETE_FRAC),
                "{}: {churn:?} of {n}",
                schema.name
            );
        }
    }
}

#[test]
fn updates_change_bodies_and_sometimes_their_length() {
    let world = World::new(5, SCALE);
    for (i, schema) in SCHEMAS.iter().enumerate() {
        let mut db = Db::new(&world, *schema, i as u64, 5, SCALE);
        let before: HashMap<[u8; 32], Vec<u8>> = db
            .docs
            .iter()
            .map(|d| {
                let mut b = Vec::new();
                d.body.write(&mut b);
                (d.id, b)
            })
            .collect();
        db.advance();
        let (mut changed, mut same_len, mut resized) = (0, 0, 0);
        for d in &db.docs {
            if d.rev_gen > 1
                && let Some(old) = before.get(&d.id)
            {
                let mut b = Vec::new();
                d.body.write(&mut b);
                if &b != old {
                    changed += 1;
                    if b.len() == old.len() {
                        same_len += 1
                    } else {
                        resized += 1
                    }
                }
            }
        }
        assert!(changed > 0, "{}: updates changed no body", schema.name);
        assert!(
            resized > 0,
            "{}: no update changed a body's length ({same_len} same)",
            schema.name
        );
    }
}

#[test]
fn output_is_couchdb_all_docs_sorted_by_id() {
    let world = World::new(1, SCALE);
    for (i, schema) in SCHEMAS.iter().enumerate() {
        let mut db = Db::new(&world, *schema, i as u64, 1, SCALE);
        db.advance();
        let raw = render(&db);
        let text = std::str::from_utf8(&raw).expect("utf-8");
        assert!(text.starts_with("{\"total_rows\":"));
        assert!(text.ends_with("}\r\n]}\n"), "CouchDB's closing");
        let v: serde_json::Value = serde_json::from_slice(&raw).expect("valid JSON");
        let rows = v["rows"].as_array().expect("rows");
        assert_eq!(v["total_rows"].as_u64(), Some(rows.len() as u64));
        assert_eq!(v["offset"].as_u64(), Some(0));
        // one row per line, "\r\n" separated
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines.len(), rows.len() + 2);
        let mut prev = String::new();
        for (row, line) in rows.iter().zip(&lines[1..]) {
            let id = row["id"].as_str().expect("id");
            assert!(
                id.len() == 32
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
            assert!(id.as_bytes() > prev.as_bytes(), "ids sorted and unique");
            prev = id.to_owned();
            assert_eq!(row["key"], row["id"]);
            assert_eq!(row["doc"]["_id"], row["id"]);
            let rev = row["value"]["rev"].as_str().expect("rev");
            assert_eq!(row["doc"]["_rev"].as_str(), Some(rev));
            let (g, h) = rev.split_once('-').expect("N-hash");
            assert!(g.parse::<u32>().expect("generation") >= 1);
            assert_eq!(h.len(), 32);
            let line = line.strip_suffix(',').unwrap_or(line);
            let parsed: serde_json::Value = serde_json::from_str(line).expect("each line is a row");
            assert_eq!(&parsed, row);
        }
    }
}

#[test]
fn cli_writes_every_day_and_database() {
    let dir = std::env::temp_dir().join(format!("cairn-workload-test-{}", std::process::id()));
    let args = |v: &[&str]| parse_args(v.iter().map(|s| (*s).to_owned()));
    let a: Args = args(&[
        "couchdb",
        "--out",
        dir.to_str().expect("path"),
        "--days",
        "2",
        "--scale",
        "0.01",
        "--quiet",
    ])
    .expect("parses")
    .expect("not help");
    run(&a).expect("runs");
    for day in ["day01", "day02"] {
        for s in &SCHEMAS {
            let p = dir
                .join(day)
                .join("couchdb")
                .join(format!("{}.json", s.name));
            let raw = std::fs::read(&p).expect("file written");
            serde_json::from_slice::<serde_json::Value>(&raw).expect("JSON");
        }
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert!(args(&["--help"]).expect("ok").is_none());
    assert!(args(&["couchdb"]).is_err(), "--out is required");
    assert!(args(&["couchdb", "--out", "x", "--scale", "0"]).is_err());
}
