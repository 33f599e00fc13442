//! Pieces of a file that arrive in any order, written as few whole,
//! aligned segments.
//!
//! A large file is restored frame by frame, and one frame's chunks land all
//! over the file: written as they came, the 14-day workload's last day took
//! 84,000 writes of about 11 KiB, and each write that starts or ends inside
//! a block the file does not have yet makes the kernel zero the rest of
//! that block first (a fifth of the writing thread's time). Pieces are
//! copied instead into buffers that each hold one aligned segment of the
//! file, and a segment is written in one call once every byte of it has
//! arrived. The blob reader serves frames in the order of where they first
//! write ([`crate::blob_reader::BlobReader::scatter`]), so a segment fills
//! soon after its first piece comes, while its buffer is still in cache.
//! At most a fixed number of segments wait at once: a piece of any other
//! segment goes straight to the file then, as does every later piece of
//! that segment, so memory is bounded whatever the order.

use std::collections::{HashMap, HashSet};
use std::io;

/// Writes at offsets (a file, or a test's record of calls).
pub(crate) trait WriteAt {
    /// Writes all of `bytes` at `at`.
    fn write_all_at(&mut self, bytes: &[u8], at: u64) -> io::Result<()>;
}

impl WriteAt for std::fs::File {
    fn write_all_at(&mut self, bytes: &[u8], at: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, bytes, at)
    }
}

/// The length of a segment: a multiple of any block size. Small enough that
/// a segment fills, and is written, while its bytes are still in the CPU's
/// cache: 256 KiB segments (64 waiting) restored the 14-day workload's last
/// day as fast on a quiet machine and up to 1.8× slower on a busy one, the
/// kernel's copy out of them twice as long.
pub(crate) const SEGMENT_LEN: usize = 64 << 10;
/// Segments waiting for pieces at once (8 MiB of buffers).
pub(crate) const MAX_WAITING: usize = 128;
/// Pieces a waiting segment keeps apart (neighbours are joined); past this
/// it goes straight to the file, so its list stays small (16 KiB).
const MAX_PIECES: usize = 1024;

/// One segment's buffer and the pieces (start, end) copied into it.
struct Waiting {
    buf: Vec<u8>,
    filled: usize,
    pieces: Vec<(usize, usize)>,
}

/// Gathers pieces of a file of a known length; see the module docs.
pub(crate) struct Gather<W> {
    out: W,
    len: u64,
    segment_len: usize,
    max_waiting: usize,
    waiting: HashMap<u64, Waiting>,
    spare: Vec<Vec<u8>>,
    /// Segments whose pieces go straight to `out` (a set, not a bitmap
    /// sized by the length a tree claims).
    direct: HashSet<u64>,
    written: u64,
}

impl<W: WriteAt> Gather<W> {
    /// Gathers for `out`, a file that will be `len` bytes long.
    pub(crate) fn new(out: W, len: u64) -> Gather<W> {
        Gather::with_bounds(out, len, SEGMENT_LEN, MAX_WAITING)
    }

    fn with_bounds(out: W, len: u64, segment_len: usize, max_waiting: usize) -> Gather<W> {
        Gather {
            out,
            len,
            segment_len,
            max_waiting,
            waiting: HashMap::new(),
            spare: Vec::new(),
            direct: HashSet::new(),
            written: 0,
        }
    }

    /// Takes `bytes`, which go at `at`; pieces of the file must not
    /// overlap. Writes what completes a segment, or goes straight out.
    pub(crate) fn put(&mut self, mut at: u64, mut bytes: &[u8]) -> io::Result<()> {
        let Some(end) = at
            .checked_add(bytes.len() as u64)
            .filter(|&end| end <= self.len)
        else {
            return Err(bug(format!(
                "{} bytes at {at} go past the file's end at {}",
                bytes.len(),
                self.len
            )));
        };
        let seg = self.segment_len as u64;
        while !bytes.is_empty() {
            let index = at / seg;
            let start = index * seg;
            let seg_end = start.saturating_add(seg).min(self.len);
            let n = if at == start && end >= seg_end {
                // Whole segments (the file's last may be short): straight
                // out, in one call.
                let n = if end == self.len {
                    bytes.len()
                } else {
                    bytes.len() / self.segment_len * self.segment_len
                };
                self.write(&bytes[..n], at)?;
                n
            } else {
                let n = usize::try_from(seg_end - at)
                    .unwrap_or(bytes.len())
                    .min(bytes.len());
                self.put_in_segment(index, at, &bytes[..n])?;
                n
            };
            (at, bytes) = (at + n as u64, &bytes[n..]);
        }
        Ok(())
    }

    /// Writes what is still waiting, piece by piece (a restore that
    /// stopped early), and returns the writer and the bytes written.
    pub(crate) fn finish(mut self) -> io::Result<(W, u64)> {
        let mut waiting: Vec<(u64, Waiting)> = self.waiting.drain().collect();
        waiting.sort_unstable_by_key(|(index, _)| *index);
        for (index, w) in waiting {
            self.write_pieces(index, w)?;
        }
        Ok((self.out, self.written))
    }

    /// Writes a waiting segment's pieces one by one.
    fn write_pieces(&mut self, index: u64, mut w: Waiting) -> io::Result<()> {
        let start = index * self.segment_len as u64;
        w.pieces.sort_unstable();
        for &(a, b) in &w.pieces {
            Self::write_out(
                &mut self.out,
                &mut self.written,
                &w.buf[a..b],
                start + a as u64,
            )?;
        }
        self.spare.push(w.buf);
        Ok(())
    }

    fn put_in_segment(&mut self, index: u64, at: u64, piece: &[u8]) -> io::Result<()> {
        let no_room = self.waiting.len() >= self.max_waiting && !self.waiting.contains_key(&index);
        if no_room || self.direct.contains(&index) {
            self.direct.insert(index);
            return self.write(piece, at);
        }
        let seg = self.segment_len as u64;
        let start = index * seg;
        let seg_len = usize::try_from(start.saturating_add(seg).min(self.len) - start).unwrap_or(0);
        let (spare, segment_len) = (&mut self.spare, self.segment_len);
        let w = self.waiting.entry(index).or_insert_with(|| {
            let mut buf = spare.pop().unwrap_or_default();
            buf.resize(segment_len, 0);
            Waiting {
                buf,
                filled: 0,
                pieces: Vec::new(),
            }
        });
        let offset = usize::try_from(at - start).unwrap_or(0);
        w.buf[offset..offset + piece.len()].copy_from_slice(piece);
        w.filled += piece.len();
        match w.pieces.last_mut() {
            Some(last) if last.1 == offset => last.1 += piece.len(),
            _ => w.pieces.push((offset, offset + piece.len())),
        }
        // Tiny pieces (a forged tree of 1-byte chunks): what is here goes
        // out now, and the rest of the segment straight after it.
        let split_too_far = w.pieces.len() > MAX_PIECES;
        if !split_too_far && w.filled < seg_len {
            return Ok(());
        }
        let Some(mut w) = self.waiting.remove(&index) else {
            return Ok(());
        };
        if split_too_far {
            self.direct.insert(index);
            return self.write_pieces(index, w);
        }
        w.pieces.sort_unstable();
        let tiles = w.pieces.windows(2).all(|p| p[0].1 == p[1].0)
            && w.pieces.first().is_some_and(|p| p.0 == 0)
            && w.pieces.last().is_some_and(|p| p.1 == seg_len);
        if !tiles {
            return Err(bug(format!("pieces of the segment at {start} overlap")));
        }
        let result = Self::write_out(&mut self.out, &mut self.written, &w.buf[..seg_len], start);
        self.spare.push(w.buf);
        result
    }

    fn write(&mut self, bytes: &[u8], at: u64) -> io::Result<()> {
        Self::write_out(&mut self.out, &mut self.written, bytes, at)
    }

    fn write_out(out: &mut W, written: &mut u64, bytes: &[u8], at: u64) -> io::Result<()> {
        out.write_all_at(bytes, at)?;
        *written += bytes.len() as u64;
        Ok(())
    }
}

/// A promise of the caller broken (its trees are checked before any byte
/// is handed here): said so, since it is reported as a failed write.
fn bug(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} (a bug in Cairn; please report it)"),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    /// A file in memory that counts its write calls.
    #[derive(Default)]
    struct Recorded {
        bytes: Vec<u8>,
        calls: Vec<(u64, usize)>,
    }

    impl WriteAt for Recorded {
        fn write_all_at(&mut self, bytes: &[u8], at: u64) -> io::Result<()> {
            self.calls.push((at, bytes.len()));
            if at > 1 << 30 {
                return Ok(()); // a call is all a test of huge offsets needs
            }
            let end = at as usize + bytes.len();
            if self.bytes.len() < end {
                self.bytes.resize(end, 0);
            }
            self.bytes[at as usize..end].copy_from_slice(bytes);
            Ok(())
        }
    }

    /// `len` bytes cut into pieces of 1..=`max` bytes, in a shuffled order.
    fn pieces(len: usize, max: usize, seed: u64) -> (Vec<u8>, Vec<(u64, std::ops::Range<usize>)>) {
        let mut x = seed;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let content: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let mut out = Vec::new();
        let mut at = 0;
        while at < len {
            let n = (1 + next() as usize % max).min(len - at);
            out.push((at as u64, at..at + n));
            at += n;
        }
        for i in (1..out.len()).rev() {
            out.swap(i, next() as usize % (i + 1));
        }
        (content, out)
    }

    #[test]
    fn pieces_in_any_order_make_the_file_in_one_call_per_segment() {
        let (content, order) = pieces(10 * 4096 + 100, 3000, 7);
        let mut g = Gather::with_bounds(Recorded::default(), content.len() as u64, 4096, 64);
        for (at, range) in &order {
            g.put(*at, &content[range.clone()]).unwrap();
        }
        let (out, written) = g.finish().unwrap();
        assert_eq!(out.bytes, content);
        assert_eq!(written, content.len() as u64);
        // 11 segments, the last one short: one write each.
        assert_eq!(out.calls.len(), 11, "{:?}", out.calls);
        assert!(
            out.calls
                .iter()
                .all(|&(at, n)| at % 4096 == 0 && (n == 4096 || at == 40960))
        );
    }

    #[test]
    fn past_the_bound_segments_go_straight_out_and_the_file_is_still_whole() {
        let (content, order) = pieces(64 * 1024, 900, 3);
        let mut g = Gather::with_bounds(Recorded::default(), content.len() as u64, 4096, 2);
        for (at, range) in &order {
            g.put(*at, &content[range.clone()]).unwrap();
            assert!(g.waiting.len() <= 2);
        }
        let (out, written) = g.finish().unwrap();
        assert_eq!(out.bytes, content);
        assert_eq!(written, content.len() as u64);
        assert!(out.calls.len() > 16, "some pieces went straight out");
    }

    #[test]
    fn whole_segments_skip_the_buffers_and_a_stop_writes_what_waits() {
        let content: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let mut g = Gather::with_bounds(Recorded::default(), content.len() as u64, 4096, 64);
        // Two whole segments and a little of the next, in one call.
        g.put(0, &content[..9000]).unwrap();
        // The end of the file, a short last segment, whole.
        g.put(16384, &content[16384..]).unwrap();
        // A piece in the middle, then a stop.
        g.put(12000, &content[12000..13000]).unwrap();
        let (out, written) = g.finish().unwrap();
        assert_eq!(
            out.calls,
            vec![
                (0, 8192),
                (16384, 20_000 - 16384),
                (8192, 808),
                (12000, 288),
                (12288, 712)
            ]
        );
        assert_eq!(written, 8192 + 3616 + 808 + 1000);
        assert_eq!(out.bytes[12000..13000], content[12000..13000]);
    }

    #[test]
    fn a_length_claimed_by_a_forged_tree_costs_nothing_until_written() {
        let mut g = Gather::new(Recorded::default(), u64::MAX);
        g.put(u64::MAX - 10, &[9; 10]).unwrap();
        assert_eq!(g.waiting.len(), 1);
        let (out, written) = g.finish().unwrap();
        assert_eq!((out.calls, written), (vec![(u64::MAX - 10, 10)], 10));
        let mut g = Gather::new(Recorded::default(), u64::MAX);
        let e = g.put(u64::MAX - 5, &[9; 10]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_segment_of_tiny_scattered_pieces_goes_straight_out_past_the_bound() {
        // Every other byte first, then the rest: 2048 pieces no neighbour joins.
        let content: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let mut g = Gather::with_bounds(Recorded::default(), 4096, 4096, 64);
        for at in (0..4096).step_by(2).chain((1..4096).step_by(2)) {
            g.put(at as u64, &content[at..=at]).unwrap();
            assert!(g.waiting.values().all(|w| w.pieces.len() <= MAX_PIECES));
        }
        let (out, written) = g.finish().unwrap();
        assert_eq!((out.bytes, written), (content, 4096));
        assert!(out.calls.len() > MAX_PIECES);
        // In order, neighbours are joined: one piece, one call.
        let mut g = Gather::with_bounds(Recorded::default(), 4096, 4096, 64);
        for at in 0..4096 {
            g.put(at, &[1]).unwrap();
        }
        assert_eq!(g.finish().unwrap().0.calls, vec![(0, 4096)]);
    }

    #[test]
    fn overlapping_pieces_and_pieces_past_the_end_are_refused() {
        let mut g = Gather::with_bounds(Recorded::default(), 8192, 4096, 64);
        g.put(0, &[1; 3000]).unwrap();
        let e = g.put(2000, &[2; 2096]).unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
        let mut g = Gather::with_bounds(Recorded::default(), 8192, 4096, 64);
        let e = g.put(8000, &[0; 200]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
