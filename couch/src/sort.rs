//! External (spilling) sort of key/value byte records.
//!
//! Sorts a CouchDB database's document ids (possibly millions) with bounded
//! memory. Records are buffered until about `memory_limit` bytes, then sorted,
//! deduplicated (the last push of a key wins) and spilled as a *run* to an
//! anonymous temporary file. [`ExternalSorter::finish`] k-way merges the runs
//! and the final in-memory buffer; if nothing was spilled, no disk is touched.
//!
//! Run file format: records in strictly ascending key order, no header or
//! trailer, each `u32 LE key len, u32 LE value len, key bytes, value bytes`.
//!
//! Memory bound: about `memory_limit` for the buffer, plus per open run one
//! 64 KiB read buffer and one record while merging. At most [`MAX_FAN_IN`] runs
//! are merged at once: whenever the newest `MAX_FAN_IN` runs have the same
//! level they are merged into one run of the next level (so open files stay
//! at about `MAX_FAN_IN` per level, levels growing logarithmically), and
//! `finish` merges the newest runs until at most `MAX_FAN_IN` remain.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

type Record = (Vec<u8>, Vec<u8>);

/// Approximate bookkeeping bytes per buffered record (two `Vec` headers).
const RECORD_OVERHEAD: usize = 48;
/// Buffer size of each run reader and writer.
const IO_BUF: usize = 64 * 1024;
/// Most runs merged at once.
const MAX_FAN_IN: usize = 64;

/// Sorts key/value records by key, spilling sorted runs to temporary files.
#[derive(Debug)]
pub(crate) struct ExternalSorter {
    memory_limit: usize,
    dir: PathBuf,
    buf: Vec<Record>,
    buf_bytes: usize,
    /// Spilled runs, oldest first, with their merge level (non-increasing).
    runs: Vec<(File, u32)>,
    spilled: usize,
}

impl ExternalSorter {
    /// `memory_limit`: approximate bytes of buffered records (keys + values +
    /// ~48 bytes per record) before a run is sorted and spilled to a temporary
    /// file in `dir` (None: [`std::env::temp_dir`]).
    pub(crate) fn new(memory_limit: usize, dir: Option<PathBuf>) -> Self {
        Self {
            memory_limit,
            dir: dir.unwrap_or_else(std::env::temp_dir),
            buf: Vec::new(),
            buf_bytes: 0,
            runs: Vec::new(),
            spilled: 0,
        }
    }

    /// Adds a record. A later push of an equal key replaces the earlier one.
    /// Keys and values must each be shorter than 4 GiB.
    pub(crate) fn push(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        len32(key.len())?;
        len32(value.len())?;
        self.buf_bytes += key.len() + value.len() + RECORD_OVERHEAD;
        self.buf.push((key.to_vec(), value.to_vec()));
        if self.buf_bytes >= self.memory_limit {
            self.spill()?;
        }
        Ok(())
    }

    /// How many runs were spilled so far (not counting merged runs).
    pub(crate) fn spilled_runs(&self) -> usize {
        self.spilled
    }

    /// All surviving records in ascending key byte order, each key once.
    pub(crate) fn finish(mut self) -> io::Result<Sorted> {
        while self.runs.len() > MAX_FAN_IN {
            let n = (self.runs.len() - MAX_FAN_IN + 1).min(MAX_FAN_IN);
            self.merge_tail(n)?;
        }
        let mut sources: Vec<Source> = self.runs.into_iter().map(|(f, _)| Source::run(f)).collect();
        sources.push(Source::Mem(sort_dedup(self.buf).into_iter()));
        Sorted::new(sources)
    }

    fn spill(&mut self) -> io::Result<()> {
        let records = sort_dedup(std::mem::take(&mut self.buf));
        self.buf_bytes = 0;
        self.runs
            .push((write_run(&self.dir, records.into_iter().map(Ok))?, 0));
        self.spilled += 1;
        // Merge the newest MAX_FAN_IN runs while they share a level.
        while self.newest_runs_share_level() {
            self.merge_tail(MAX_FAN_IN)?;
        }
        Ok(())
    }

    fn newest_runs_share_level(&self) -> bool {
        let oldest = self
            .runs
            .len()
            .checked_sub(MAX_FAN_IN)
            .map(|i| self.runs[i].1);
        oldest.is_some_and(|level| self.runs.last().is_some_and(|(_, l)| *l == level))
    }

    /// Replaces the newest `n` runs by their merge (order is preserved).
    fn merge_tail(&mut self, n: usize) -> io::Result<()> {
        let tail = self.runs.split_off(self.runs.len() - n);
        let level = tail.first().map_or(0, |(_, l)| l + 1);
        let merged = Sorted::new(tail.into_iter().map(|(f, _)| Source::run(f)).collect())?;
        self.runs.push((write_run(&self.dir, merged)?, level));
        Ok(())
    }

    /// Test hook: cuts `by` bytes off the end of the newest run.
    #[cfg(test)]
    fn truncate_last_run(&mut self, by: u64) -> io::Result<()> {
        let (file, _) = self.runs.last().ok_or_else(|| corrupt("no run"))?;
        file.set_len(file.metadata()?.len().saturating_sub(by))
    }
}

/// Stable sort by key, keeping the last record of each key.
fn sort_dedup(mut records: Vec<Record>) -> Vec<Record> {
    records.sort_by(|a, b| a.0.cmp(&b.0));
    records.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            std::mem::swap(later, kept);
        }
        same
    });
    records
}

fn len32(len: usize) -> io::Result<u32> {
    u32::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "sort record too large"))
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupt sort run: {what}"),
    )
}

/// Writes sorted records to a new anonymous temporary file, rewound to its start.
fn write_run(
    dir: &Path,
    records: impl IntoIterator<Item = io::Result<Record>>,
) -> io::Result<File> {
    let mut w = BufWriter::with_capacity(IO_BUF, tempfile::tempfile_in(dir)?);
    for record in records {
        let (key, value) = record?;
        w.write_all(&len32(key.len())?.to_le_bytes())?;
        w.write_all(&len32(value.len())?.to_le_bytes())?;
        w.write_all(&key)?;
        w.write_all(&value)?;
    }
    let mut file = w.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.rewind()?;
    Ok(file)
}

/// One sorted, duplicate-free input of a merge.
#[derive(Debug)]
enum Source {
    Run(BufReader<File>),
    Mem(std::vec::IntoIter<Record>),
}

impl Source {
    fn run(file: File) -> Self {
        Self::Run(BufReader::with_capacity(IO_BUF, file))
    }

    fn next(&mut self) -> io::Result<Option<Record>> {
        let r = match self {
            Self::Mem(it) => return Ok(it.next()),
            Self::Run(r) => r,
        };
        if r.fill_buf()?.is_empty() {
            return Ok(None);
        }
        let mut header = [0u8; 8];
        r.read_exact(&mut header)
            .map_err(|e| eof_is_corrupt(e, "truncated header"))?;
        let [k0, k1, k2, k3, v0, v1, v2, v3] = header;
        let key = read_vec(r, u32::from_le_bytes([k0, k1, k2, k3]))?;
        let value = read_vec(r, u32::from_le_bytes([v0, v1, v2, v3]))?;
        Ok(Some((key, value)))
    }
}

fn eof_is_corrupt(e: io::Error, what: &str) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        corrupt(what)
    } else {
        e
    }
}

/// Reads exactly `len` bytes without trusting `len` for the allocation.
fn read_vec(r: &mut impl Read, len: u32) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    r.take(u64::from(len)).read_to_end(&mut v)?;
    if u64::try_from(v.len()) != Ok(u64::from(len)) {
        return Err(corrupt("truncated record"));
    }
    Ok(v)
}

/// The current record of one source in the merge heap.
#[derive(Debug)]
struct Head {
    key: Vec<u8>,
    value: Vec<u8>,
    src: usize,
}

impl Ord for Head {
    /// Max-heap order: smallest key first; for equal keys the newest source.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key.cmp(&self.key).then(self.src.cmp(&other.src))
    }
}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}

/// Sorted output of an [`ExternalSorter`]; owns (and on drop deletes) its run files.
/// Yields each key once, ascending; stops after the first error.
#[derive(Debug)]
pub(crate) struct Sorted {
    /// Oldest first: on equal keys the highest index wins.
    sources: Vec<Source>,
    heap: BinaryHeap<Head>,
}

impl Sorted {
    fn new(sources: Vec<Source>) -> io::Result<Self> {
        let mut s = Self {
            heap: BinaryHeap::with_capacity(sources.len()),
            sources,
        };
        for src in 0..s.sources.len() {
            s.advance(src)?;
        }
        Ok(s)
    }

    fn advance(&mut self, src: usize) -> io::Result<()> {
        if let Some((key, value)) = self.sources[src].next()? {
            self.heap.push(Head { key, value, src });
        }
        Ok(())
    }

    fn next_record(&mut self) -> io::Result<Option<Record>> {
        let Some(top) = self.heap.pop() else {
            return Ok(None);
        };
        self.advance(top.src)?;
        // Older records of the same key (at most one per other source) lose.
        while self.heap.peek().is_some_and(|h| h.key == top.key) {
            if let Some(dup) = self.heap.pop() {
                self.advance(dup.src)?;
            }
        }
        Ok(Some((top.key, top.value)))
    }
}

impl Iterator for Sorted {
    type Item = io::Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record()
            .inspect_err(|_| {
                self.heap.clear();
                self.sources.clear();
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn sorted(s: ExternalSorter) -> io::Result<Vec<Record>> {
        s.finish()?.collect()
    }

    fn rec(k: &str, v: &str) -> Record {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn empty() {
        let s = ExternalSorter::new(0, None);
        assert_eq!(sorted(s).unwrap(), vec![]);
    }

    #[test]
    fn single_record_stays_in_memory() {
        let mut s = ExternalSorter::new(1 << 20, None);
        s.push(b"k", b"v").unwrap();
        assert_eq!(s.spilled_runs(), 0);
        assert_eq!(sorted(s).unwrap(), vec![rec("k", "v")]);
    }

    #[test]
    fn last_push_wins_within_and_across_runs() {
        let dir = tempfile::tempdir().unwrap();
        // Each record is 50 bytes of budget: runs of two records.
        let mut s = ExternalSorter::new(100, Some(dir.path().to_owned()));
        for (k, v) in [
            ("b", "1"),
            ("b", "2"),
            ("a", "1"),
            ("c", "1"),
            ("a", "2"),
            ("b", "3"),
            ("c", "2"),
        ] {
            s.push(k.as_bytes(), v.as_bytes()).unwrap();
        }
        assert_eq!(s.spilled_runs(), 3);
        assert_eq!(
            sorted(s).unwrap(),
            vec![rec("a", "2"), rec("b", "3"), rec("c", "2")]
        );
    }

    #[test]
    fn multi_level_merge() {
        // Every push spills: runs merge at two levels and `finish` is left
        // with 1 + 3 + 63 runs of levels 2, 1, 0, more than it may merge at once.
        let mut s = ExternalSorter::new(0, None);
        let n: usize = 64 * 64 + 3 * 64 + 63;
        for i in 0..n {
            let key = format!("{:05}", (i * 7919) % 1000);
            s.push(key.as_bytes(), &i.to_le_bytes()).unwrap();
        }
        assert_eq!(s.spilled_runs(), n);
        let levels: Vec<u32> = s.runs.iter().map(|(_, l)| *l).collect();
        assert_eq!(levels, [[2].as_slice(), &[1; 3], &[0; 63]].concat());
        let out = sorted(s).unwrap();
        assert_eq!(out.len(), 1000);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
        // Key (i*7919)%1000 == 0 last at the largest i < n with i % 1000 == 0.
        assert_eq!(
            out[0],
            (b"00000".to_vec(), 4000usize.to_le_bytes().to_vec())
        );
    }

    fn truncated_run_error(by: u64) -> io::Error {
        // Two records of 5 + 8 bytes each: one 26-byte run.
        let mut s = ExternalSorter::new(2 * (5 + RECORD_OVERHEAD), None);
        s.push(b"a", b"1111").unwrap();
        s.push(b"b", b"2222").unwrap();
        assert_eq!(s.spilled_runs(), 1);
        s.truncate_last_run(by).unwrap();
        sorted(s).unwrap_err()
    }

    #[test]
    fn truncated_run_is_invalid_data() {
        // Inside the second value, inside the second header, inside the first key.
        for by in [3, 10, 16] {
            assert_eq!(
                truncated_run_error(by).kind(),
                io::ErrorKind::InvalidData,
                "by {by}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn matches_btreemap(
            records in proptest::collection::vec(
                (proptest::collection::vec(0u8..4, 0..4), proptest::collection::vec(any::<u8>(), 0..8)),
                0..600,
            ),
        ) {
            let mut s = ExternalSorter::new(200, None);
            let mut model = BTreeMap::new();
            for (k, v) in &records {
                s.push(k, v).unwrap();
                model.insert(k.clone(), v.clone());
            }
            let expected: Vec<Record> = model.into_iter().collect();
            prop_assert_eq!(sorted(s).unwrap(), expected);
        }
    }
}
