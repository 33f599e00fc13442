//! One simulated CouchDB database: the live document set, its daily churn, and the
//! `_all_docs?include_docs=true` rendering.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::json::{Value, write_members, write_str};
use crate::rng::Rng;
use crate::schemas::Schema;
use crate::world::{DAY, DAY1, World, during_day};

/// Daily churn, as fractions of the documents alive at the start of the day.
pub const UPDATE_FRAC: (f64, f64) = (0.01, 0.03);
pub const INSERT_FRAC: (f64, f64) = (0.004, 0.006);
pub const DELETE_FRAC: (f64, f64) = (0.0004, 0.0006);

#[derive(Debug, Clone)]
pub struct Doc {
    pub id: [u8; 32],
    pub rev_gen: u32,
    pub rev_hash: [u8; 32],
    pub body: Value,
}

impl Doc {
    fn id_str(&self) -> &str {
        std::str::from_utf8(&self.id).unwrap_or("")
    }
}

/// What one day's churn did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Churn {
    pub updated: usize,
    pub inserted: usize,
    pub deleted: usize,
}

#[derive(Debug)]
pub struct Db<'w> {
    pub schema: Schema,
    index: u64,
    seed: u64,
    world: &'w World,
    /// Sorted by id (byte order), as `_all_docs` returns them.
    pub docs: Vec<Doc>,
    /// The last day whose state `docs` holds.
    pub day: u32,
}

impl<'w> Db<'w> {
    /// The database as it is on day 1.
    pub fn new(world: &'w World, schema: Schema, index: u64, seed: u64, scale: f64) -> Self {
        let mut rng = Rng::derive(seed, &[index, 1]);
        let n = rng.round_prob(schema.base_docs as f64 * scale).max(10);
        let now = DAY1;
        let mut docs = Vec::with_capacity(n + n / 10);
        for _ in 0..n {
            // existing data: created over the last ~2 years, last touched since then
            let created = now - rng.range(DAY, 700 * DAY);
            let modified = created + rng.range(0, now - created);
            let rev_gen = if rng.chance(0.5) {
                1
            } else {
                let hi = if rng.chance(0.9) { 6 } else { 60 };
                u32::try_from(rng.range(2, hi)).unwrap_or(2)
            };
            let body = (schema.generate)(world, &mut rng, created, modified);
            docs.push(Doc {
                id: rng.hex32(),
                rev_gen,
                rev_hash: rng.hex32(),
                body,
            });
        }
        docs.sort_unstable_by_key(|d| d.id);
        Self {
            schema,
            index,
            seed,
            world,
            docs,
            day: 1,
        }
    }

    /// Advances one day: updates 1–3 %, inserts ~0.5 %, deletes ~0.05 % of the documents.
    pub fn advance(&mut self) -> Churn {
        self.day += 1;
        let day = self.day;
        let mut rng = Rng::derive(self.seed, &[self.index, u64::from(day)]);
        let n = self.docs.len() as f64;
        let f_upd = rng.frange(UPDATE_FRAC.0, UPDATE_FRAC.1);
        let n_upd = rng.round_prob(n * f_upd);
        let f_ins = rng.frange(INSERT_FRAC.0, INSERT_FRAC.1);
        let n_ins = rng.round_prob(n * f_ins);
        let f_del = rng.frange(DELETE_FRAC.0, DELETE_FRAC.1);
        let n_del = rng.round_prob(n * f_del);
        let picked = rng.sample_indices(self.docs.len(), n_del + n_upd);
        let (del, upd) = picked.split_at(n_del.min(picked.len()));

        for &i in upd {
            let now = during_day(&mut rng, day);
            let d = &mut self.docs[i];
            // most documents are written once that day, some several times
            d.rev_gen += if rng.chance(0.8) {
                1
            } else {
                u32::try_from(rng.range(2, 4)).unwrap_or(2)
            };
            d.rev_hash = rng.hex32();
            (self.schema.mutate)(self.world, &mut rng, &mut d.body, now);
        }

        if !del.is_empty() {
            let mut dead = vec![false; self.docs.len()];
            for &i in del {
                dead[i] = true;
            }
            let mut k = 0;
            self.docs.retain(|_| {
                k += 1;
                !dead[k - 1]
            });
        }

        for _ in 0..n_ins {
            let created = during_day(&mut rng, day);
            let modified = (created + rng.range(0, 3600)).min(DAY1 + i64::from(day) * DAY - 1);
            let body = (self.schema.generate)(self.world, &mut rng, created, modified);
            self.docs.push(Doc {
                id: rng.hex32(),
                rev_gen: 1,
                rev_hash: rng.hex32(),
                body,
            });
        }
        self.docs.sort_unstable_by_key(|d| d.id);
        Churn {
            updated: upd.len(),
            inserted: n_ins,
            deleted: del.len(),
        }
    }

    /// Writes `_all_docs?include_docs=true` exactly as CouchDB 3 streams it.
    pub fn write_all_docs<W: Write>(&self, w: &mut W) -> io::Result<u64> {
        let mut written = 0u64;
        let head = format!(
            "{{\"total_rows\":{},\"offset\":0,\"rows\":[\r\n",
            self.docs.len()
        );
        w.write_all(head.as_bytes())?;
        written += head.len() as u64;
        let mut row = Vec::with_capacity(64 * 1024);
        for (i, d) in self.docs.iter().enumerate() {
            row.clear();
            if i > 0 {
                row.extend_from_slice(b",\r\n");
            }
            let rev = format!(
                "{}-{}",
                d.rev_gen,
                std::str::from_utf8(&d.rev_hash).unwrap_or("")
            );
            row.extend_from_slice(b"{\"id\":");
            write_str(&mut row, d.id_str());
            row.extend_from_slice(b",\"key\":");
            write_str(&mut row, d.id_str());
            row.extend_from_slice(b",\"value\":{\"rev\":");
            write_str(&mut row, &rev);
            row.extend_from_slice(b"},\"doc\":{\"_id\":");
            write_str(&mut row, d.id_str());
            row.extend_from_slice(b",\"_rev\":");
            write_str(&mut row, &rev);
            if let Value::Obj(fields) = &d.body {
                write_members(&mut row, fields, true);
            }
            row.extend_from_slice(b"}}");
            w.write_all(&row)?;
            written += row.len() as u64;
        }
        w.write_all(b"\r\n]}\n")?;
        Ok(written + 5)
    }

    pub fn write_file(&self, path: &Path) -> io::Result<u64> {
        let mut w = BufWriter::with_capacity(8 << 20, File::create(path)?);
        let n = self.write_all_docs(&mut w)?;
        w.flush()?;
        Ok(n)
    }
}
