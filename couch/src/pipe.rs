//! A byte pipe between threads that tells a finished stream from a broken
//! one: the writer must say [`PipeWriter::finish`], so a writer that failed
//! or vanished is an error at the reader, never a silent short read.

use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

/// Bytes gathered before a chunk is sent.
const CHUNK_LEN: usize = 256 * 1024;

enum Msg {
    Data(Bytes),
    /// Bytes `len` at `offset` of the pipe's spill file.
    Spilled(Arc<File>, u64, usize),
    End,
    Fail(String),
}

/// Creates a pipe holding at most `chunks` chunks of 256 KiB in transit.
pub(crate) fn pipe(chunks: usize) -> (PipeWriter, PipeReader) {
    let (tx, rx) = crossbeam_channel::bounded(chunks.max(1));
    (
        PipeWriter {
            tx: Some(tx),
            buf: Vec::with_capacity(CHUNK_LEN),
            spill: None,
        },
        PipeReader {
            rx,
            current: Bytes::new(),
            done: false,
            held: None,
        },
    )
}

/// Creates a pipe that never blocks its writer: up to `chunks` chunks of
/// 256 KiB wait in memory; past that, what the reader has not taken yet
/// waits in an anonymous temporary file (created when first needed, gone
/// when both ends are). For a stream its reader may reach late: a backup
/// stores one database's streams after another's, and the next database's
/// producer runs ahead into the file instead of waiting; a stream the reader
/// keeps up with never touches the disk.
pub(crate) fn spill_pipe(chunks: usize) -> (PipeWriter, PipeReader) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let held = Arc::new(AtomicUsize::new(0));
    (
        PipeWriter {
            tx: Some(tx),
            buf: Vec::with_capacity(CHUNK_LEN),
            spill: Some(Spill {
                file: None,
                len: 0,
                held: Arc::clone(&held),
                limit: chunks.max(1) * CHUNK_LEN,
            }),
        },
        PipeReader {
            rx,
            current: Bytes::new(),
            done: false,
            held: Some(held),
        },
    )
}

/// What the user sees when what is fetched ahead cannot be kept on disk.
fn spill_error(e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "keeping what is fetched ahead in a temporary file (in $TMPDIR, else /tmp): {e}; \
             free space there or point TMPDIR at a larger file system"
        ),
    )
}

/// A spilling writer's file, how much it holds, and the bytes in memory.
struct Spill {
    file: Option<Arc<File>>,
    len: u64,
    /// Bytes sent in memory and not yet taken by the reader.
    held: Arc<AtomicUsize>,
    limit: usize,
}

/// The sending end; implements [`Write`].
pub(crate) struct PipeWriter {
    tx: Option<crossbeam_channel::Sender<Msg>>,
    buf: Vec<u8>,
    spill: Option<Spill>,
}

/// Fails a pipe from elsewhere (a task that owns the writer by then).
#[derive(Clone)]
pub(crate) struct PipeFailer(crossbeam_channel::Sender<Msg>);

impl PipeFailer {
    /// Makes the reader fail with `detail` once it has read what came before.
    pub fn fail(&self, detail: String) {
        let _ = self.0.send(Msg::Fail(detail));
    }
}

impl PipeWriter {
    fn sender(&self) -> io::Result<&crossbeam_channel::Sender<Msg>> {
        self.tx
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "pipe already closed"))
    }

    fn send(&self, msg: Msg) -> io::Result<()> {
        self.sender()?
            .send(msg)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the reader went away"))
    }

    /// A handle that can fail this pipe.
    pub fn failer(&self) -> Option<PipeFailer> {
        self.tx.as_ref().map(|tx| PipeFailer(tx.clone()))
    }

    /// Sends what is buffered and marks the end: the reader sees EOF.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.tx.is_none() {
            return Ok(());
        }
        self.flush()?;
        self.send(Msg::End)?;
        self.tx = None;
        Ok(())
    }

    /// Makes the reader fail with `detail` (after what was sent before).
    pub fn fail(&mut self, detail: String) {
        if self.tx.is_some() {
            let _ = self.send(Msg::Fail(detail));
            self.tx = None;
        }
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.sender()?;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_LEN {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.sender()?;
        if let Some(spill) = &mut self.spill
            && spill.held.load(Ordering::SeqCst) + self.buf.len() > spill.limit
        {
            let file = match &spill.file {
                Some(f) => Arc::clone(f),
                None => Arc::clone(
                    spill
                        .file
                        .insert(Arc::new(tempfile::tempfile().map_err(spill_error)?)),
                ),
            };
            file.write_all_at(&self.buf, spill.len)
                .map_err(spill_error)?;
            let msg = Msg::Spilled(file, spill.len, self.buf.len());
            spill.len += self.buf.len() as u64;
            self.buf.clear();
            return self.send(msg);
        }
        if let Some(spill) = &self.spill {
            spill.held.fetch_add(self.buf.len(), Ordering::SeqCst);
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK_LEN),
        ));
        self.send(Msg::Data(chunk))
    }
}

/// The receiving end; implements [`Read`] and [`BufRead`].
pub(crate) struct PipeReader {
    rx: crossbeam_channel::Receiver<Msg>,
    current: Bytes,
    done: bool,
    /// A spilling pipe's count of bytes in memory (see [`spill_pipe`]).
    held: Option<Arc<AtomicUsize>>,
}

impl PipeReader {
    fn refill(&mut self) -> io::Result<()> {
        while self.current.is_empty() && !self.done {
            match self.rx.recv() {
                Ok(Msg::Data(b)) => {
                    if let Some(held) = &self.held {
                        held.fetch_sub(b.len(), Ordering::SeqCst);
                    }
                    self.current = b;
                }
                Ok(Msg::Spilled(file, offset, len)) => {
                    let mut chunk = vec![0; len];
                    file.read_exact_at(&mut chunk, offset)?;
                    self.current = Bytes::from(chunk);
                }
                Ok(Msg::End) => self.done = true,
                Ok(Msg::Fail(detail)) => return Err(io::Error::other(detail)),
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the stream's producer stopped before its end",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.refill()?;
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
        Ok(n)
    }
}

impl BufRead for PipeReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.refill()?;
        Ok(&self.current)
    }

    fn consume(&mut self, n: usize) {
        bytes::Buf::advance(&mut self.current, n);
    }
}

/// Reads `\n`-terminated lines; the last line must be terminated too.
pub(crate) struct Lines<R> {
    reader: R,
    /// Lines read so far, for error messages.
    pub number: u64,
}

impl<R: BufRead> Lines<R> {
    /// Wraps a reader.
    pub fn new(reader: R) -> Self {
        Lines { reader, number: 0 }
    }

    /// The next line without its `\n` into `buf`; false at the end.
    pub fn next_into(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        buf.clear();
        if self.reader.read_until(b'\n', buf)? == 0 {
            return Ok(false);
        }
        self.number += 1;
        if buf.pop() != Some(b'\n') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("line {} is not terminated (truncated?)", self.number),
            ));
        }
        Ok(true)
    }

    /// Reads everything left.
    pub fn read_to_end(&mut self, out: &mut Vec<u8>) -> io::Result<usize> {
        self.reader.read_to_end(out)
    }

    /// Reads exactly `len` bytes and a `\n`. The length comes from a record
    /// header, so it is not trusted: what is reserved grows with the bytes
    /// that actually arrive, never with what the header claims.
    pub fn read_blob(&mut self, len: u64, out: &mut Vec<u8>) -> io::Result<()> {
        out.clear();
        out.reserve(usize::try_from(len).unwrap_or(usize::MAX).min(1 << 20));
        let got = (&mut self.reader).take(len).read_to_end(out)?;
        if got as u64 != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("attachment record has {got} bytes, its header says {len} (truncated?)"),
            ));
        }
        let mut end = [0u8; 1];
        self.reader.read_exact(&mut end)?;
        if end != *b"\n" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "attachment record is not terminated",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spilling pipe takes everything without a reader (a bounded one
    /// would block here), keeping past its memory on disk, in order; a
    /// reader that keeps up never sends a byte to disk; a failure comes
    /// after what was written before it.
    #[test]
    fn spill_pipes_never_block_and_spill_only_what_the_reader_has_not_taken() {
        let data: Vec<u8> = (0..5 * CHUNK_LEN + 123)
            .map(|i| u8::try_from(i % 251).unwrap_or_default())
            .collect();
        let spilled = |w: &PipeWriter| w.spill.as_ref().is_some_and(|s| s.file.is_some());
        let (mut w, mut r) = spill_pipe(2);
        for piece in data.chunks(10_000) {
            w.write_all(piece).unwrap();
        }
        assert!(spilled(&w), "past two chunks, the rest waits on disk");
        w.finish().unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert!(got == data, "same bytes, in order");

        let (mut w, mut r) = spill_pipe(2);
        let mut got = Vec::new();
        for piece in data.chunks(CHUNK_LEN) {
            w.write_all(piece).unwrap();
            w.flush().unwrap();
            let mut buf = vec![0; piece.len()];
            r.read_exact(&mut buf).unwrap();
            got.extend(buf);
        }
        assert!(!spilled(&w), "a reader that keeps up: nothing on disk");
        assert!(got == data);

        let (mut w, mut r) = spill_pipe(1);
        w.write_all(&data).unwrap();
        w.flush().unwrap();
        w.fail("boom".into());
        let mut got = Vec::new();
        let e = r.read_to_end(&mut got).unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
        assert_eq!(got.len(), data.len(), "what came before the failure");
    }

    #[test]
    fn finished_streams_end_and_broken_ones_fail() {
        let (mut w, mut r) = pipe(2);
        let t = std::thread::spawn(move || {
            w.write_all(b"a\nbb\n").unwrap();
            w.finish().unwrap();
        });
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        t.join().unwrap();
        assert_eq!(s, "a\nbb\n");

        let (mut w, mut r) = pipe(2);
        w.write_all(b"partial").unwrap();
        w.flush().unwrap();
        drop(w);
        let mut s = String::new();
        assert_eq!(
            r.read_to_string(&mut s).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );

        let (mut w, mut r) = pipe(2);
        w.fail("boom".into());
        assert!(
            r.read(&mut [0; 4])
                .unwrap_err()
                .to_string()
                .contains("boom")
        );
    }

    #[test]
    fn a_record_length_beyond_the_data_is_an_error_not_an_allocation() {
        // A header in a hostile dump claims far more bytes than follow.
        for len in [1u64 << 40, u64::MAX, 6] {
            let mut lines = Lines::new(&b"hello\n"[..]);
            let mut out = Vec::new();
            let err = lines.read_blob(len, &mut out).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{len}: {err}");
            assert!(
                out.capacity() <= 1 << 20,
                "{len}: reserved {}",
                out.capacity()
            );
        }
        let mut lines = Lines::new(&b"hello\nx"[..]);
        let mut out = Vec::new();
        lines.read_blob(5, &mut out).unwrap();
        assert_eq!(out, b"hello");
        let mut lines = Lines::new(&b"hellox"[..]);
        assert!(lines.read_blob(5, &mut out).is_err());
    }

    /// Reads an attachments.bin stream as restore and verify do.
    fn read_records(bytes: &[u8]) -> io::Result<usize> {
        let mut lines = Lines::new(bytes);
        let (mut line, mut data, mut records) = (Vec::new(), Vec::new(), 0);
        while lines.next_into(&mut line)? {
            let header: crate::format::AttHeader =
                serde_json::from_slice(&line).map_err(io::Error::other)?;
            lines.read_blob(header.len, &mut data)?;
            assert!(data.capacity() <= bytes.len().max(1 << 20));
            records += 1;
        }
        Ok(records)
    }

    #[test]
    fn attachment_streams_with_any_length_or_cut_are_errors_not_panics() {
        use crate::format::{AttHeader, encode_attachment};
        let header = AttHeader {
            id: "doc".into(),
            name: "a.txt".into(),
            revpos: 1,
            digest: "md5-XUFAKrxLKna5cZ2REBfFkg==".into(),
            encoding: None,
            data_digest: None,
            len: 5,
        };
        let mut stream = Vec::new();
        encode_attachment(&header, b"hello", &mut stream);
        encode_attachment(&header, b"hello", &mut stream);
        assert_eq!(read_records(&stream).unwrap(), 2);
        let text = String::from_utf8(stream.clone()).unwrap();
        for len in [
            "0",
            "4",
            "6",
            "11",
            "12",
            "4294967295",
            "4294967296",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "-1",
        ] {
            let lying = text.replacen("\"len\":5", &format!("\"len\":{len}"), 1);
            let _ = read_records(lying.as_bytes());
        }
        for cut in 0..stream.len() {
            // Only a cut between records reads as a (shorter) whole stream.
            if let Ok(n) = read_records(&stream[..cut]) {
                assert_eq!(cut, n * stream.len() / 2, "cut at {cut}");
            }
        }
    }

    #[test]
    fn lines_must_be_terminated() {
        let mut lines = Lines::new(&b"x\ny"[..]);
        let mut buf = Vec::new();
        assert!(lines.next_into(&mut buf).unwrap());
        assert_eq!(buf, b"x");
        assert!(lines.next_into(&mut buf).is_err());
    }
}
