//! Compresses frames on rayon as they fill, and packs them in order.
//!
//! The ingest thread hands over each full frame and goes on hashing; the
//! frame is compressed on the rayon pool while others are; a packer thread
//! puts the compressed frames back in submission order (so the same input
//! always gives the same packs), fills packs and passes them to the
//! uploader. A fixed number of tokens bounds the frames in flight, which
//! bounds memory and gives back-pressure all the way to the reader.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::frame::{Frame, FrameBuilder};
use crate::id::PackId;
use crate::pack::{PackTrailer, PackWriter};

/// A finished pack on its way to the uploader.
pub(crate) struct FinishedPack {
    pub id: PackId,
    pub bytes: Bytes,
    pub trailer: PackTrailer,
}

/// The submitting side.
pub(crate) struct Packer {
    level: i32,
    next_seq: u64,
    tokens: Receiver<()>,
    done: Sender<(u64, Result<Frame>)>,
    failed: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl Packer {
    /// Starts the packer thread; at most `in_flight` frames are compressing
    /// or waiting for their turn at once.
    pub fn start(
        level: i32,
        pack_target_len: usize,
        in_flight: usize,
        packs: mpsc::Sender<FinishedPack>,
    ) -> Result<Packer> {
        let (token_tx, tokens) = bounded(in_flight);
        for _ in 0..in_flight {
            let _ = token_tx.send(());
        }
        let (done, done_rx) = unbounded();
        let failed = Arc::new(AtomicBool::new(false));
        let thread_failed = Arc::clone(&failed);
        let thread = std::thread::Builder::new()
            .name("cairn-packer".into())
            .spawn(move || pack_in_order(done_rx, token_tx, pack_target_len, packs, thread_failed))
            .map_err(|e| Error::io("starting the packer thread", e))?;
        Ok(Packer {
            level,
            next_seq: 0,
            tokens,
            done,
            failed,
            thread,
        })
    }

    /// Queues a frame for compression; waits while too many are in flight.
    pub fn submit(&mut self, frame: FrameBuilder) -> Result<()> {
        if frame.is_empty() {
            return Ok(());
        }
        if self.failed.load(Ordering::Relaxed) || self.tokens.recv().is_err() {
            return Err(Error::invalid("the packer stopped"));
        }
        let (seq, level, done) = (self.next_seq, self.level, self.done.clone());
        self.next_seq += 1;
        rayon::spawn(move || {
            let _ = done.send((seq, frame.compress(level)));
        });
        Ok(())
    }

    /// Waits for every frame to be packed and the last pack handed over.
    pub fn finish(self) -> Result<()> {
        drop(self.done);
        self.thread
            .join()
            .map_err(|_| Error::invalid("the packer thread panicked"))?
    }
}

fn pack_in_order(
    done: Receiver<(u64, Result<Frame>)>,
    tokens: Sender<()>,
    pack_target_len: usize,
    packs: mpsc::Sender<FinishedPack>,
    failed: Arc<AtomicBool>,
) -> Result<()> {
    let mut waiting: BTreeMap<u64, Result<Frame>> = BTreeMap::new();
    let mut next = 0u64;
    // Room for a full pack and the frame that closes it.
    let capacity = pack_target_len + (1 << 20);
    let mut pack = PackWriter::with_capacity(capacity);
    let mut error: Option<Error> = None;
    let send = |pack: PackWriter| -> Result<()> {
        let (id, bytes, trailer) = pack.finish();
        packs
            .blocking_send(FinishedPack { id, bytes, trailer })
            .map_err(|_| Error::invalid("the pack uploader stopped"))
    };
    for (seq, frame) in done {
        waiting.insert(seq, frame);
        while let Some(frame) = waiting.remove(&next) {
            next += 1;
            let _ = tokens.send(());
            if error.is_some() {
                continue; // drain, so the submitter never waits forever
            }
            let outcome = frame.and_then(|frame| {
                pack.add_frame(frame);
                if pack.len() >= pack_target_len {
                    send(std::mem::replace(
                        &mut pack,
                        PackWriter::with_capacity(capacity),
                    ))
                } else {
                    Ok(())
                }
            });
            if let Err(e) = outcome {
                failed.store(true, Ordering::Relaxed);
                error = Some(e);
            }
        }
    }
    match error {
        Some(e) => Err(e),
        None if !pack.is_empty() => send(pack),
        None => Ok(()),
    }
}
