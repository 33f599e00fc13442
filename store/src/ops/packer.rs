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
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use crate::backend::{Backend, Created, ObjectKey};
use crate::error::{Error, Result};
use crate::format::frame::{Frame, FrameBuilder};
use crate::format::index::{IndexedPack, encode_index};
use crate::format::pack::{PackTrailer, PackWriter, renonce};
use crate::id::{IdSet, IndexId, PackId};
use crate::pause::Pauses;

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
            .map_err(|_| Error::Bug("the packer thread panicked".into()))?
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

/// Index objects are split to stay under this size.
const MAX_INDEX_LEN: usize = 32 << 20;

/// A random non-zero nonce.
fn random_nonce() -> Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| Error::invalid(format!("no randomness: {e}")))?;
    Ok(u64::from_le_bytes(b) | 1)
}

/// Uploads packs as they arrive, up to `concurrency` at once, and returns
/// what the index objects must record of them. A pack whose name is taken
/// by a pack garbage collection condemned (`avoid`), or by a damaged copy,
/// is stored again under another nonce: the write protocol never relies on
/// a pack that may be deleted.
pub(crate) async fn upload_packs(
    backend: Backend,
    rx: mpsc::Receiver<FinishedPack>,
    concurrency: usize,
    avoid: Arc<IdSet<PackId>>,
    pauses: Pauses,
    flush: Option<IndexFlush>,
) -> Result<Uploaded> {
    let uploads = futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|p| (p, rx)) },
    )
    .map(|pack| {
        let backend = backend.clone();
        let avoid = Arc::clone(&avoid);
        let pauses = pauses.clone();
        async move {
            let FinishedPack {
                mut id,
                mut bytes,
                mut trailer,
            } = pack;
            for attempt in 0..3 {
                let outcome = if avoid.contains(&id) {
                    Ok(Created::Existed)
                } else {
                    backend.put_new(&ObjectKey::Pack(id), bytes.clone()).await
                };
                match outcome {
                    Ok(Created::New) => break,
                    Ok(Created::Existed) if !avoid.contains(&id) => {
                        tracing::debug!("pack {id} was already stored");
                        break;
                    }
                    Ok(Created::Existed) | Err(Error::Corrupt { .. }) if attempt < 2 => {
                        tracing::debug!(
                            "pack {id} is condemned or damaged; storing it under another nonce"
                        );
                        (id, bytes, trailer) = renonce(&bytes, &trailer, random_nonce()?);
                    }
                    Ok(_) => return Err(Error::invalid(format!("pack {id}: no usable name"))),
                    Err(e) => return Err(e),
                }
            }
            pauses.at("backup:pack-stored").await;
            Ok(IndexedPack {
                id,
                len: bytes.len() as u64,
                trailer,
            })
        }
    })
    .buffer_unordered(concurrency);
    futures::pin_mut!(uploads);
    let mut done = Uploaded::default();
    let mut blobs = 0usize;
    while let Some(pack) = uploads.try_next().await? {
        done.packs += 1;
        done.pack_bytes += pack.len;
        blobs += pack.trailer.blobs.len();
        done.unindexed.push(pack);
        if let Some(f) = &flush
            && blobs >= f.every_blobs
        {
            // Index objects may follow their packs at any time before the
            // manifest; writing them as we go keeps memory flat.
            f.lease.check()?;
            done.index_bytes += store_index(&backend, std::mem::take(&mut done.unindexed)).await?;
            blobs = 0;
        }
    }
    Ok(done)
}

/// What [`upload_packs`] stored.
#[derive(Debug, Default)]
pub(crate) struct Uploaded {
    /// Packs stored.
    pub packs: u64,
    /// Their bytes.
    pub pack_bytes: u64,
    /// Bytes of the index objects already written for some of them.
    pub index_bytes: u64,
    /// The packs no index object names yet: the caller indexes them.
    pub unindexed: Vec<IndexedPack>,
}

/// Index objects written during the upload, every `every_blobs` blobs,
/// while `lease` holds.
#[derive(Debug, Clone)]
pub(crate) struct IndexFlush {
    pub every_blobs: usize,
    pub lease: crate::lease::LeaseChecker,
}

/// Writes index objects naming `packs` (split to stay under 32 MiB each);
/// returns the bytes written. An index object whose name is taken by a
/// damaged copy cannot be replaced (create-only), and deleting it first
/// would orphan the snapshots that rely on it: it is stored under another
/// nonce instead.
pub(crate) async fn store_index(backend: &Backend, mut packs: Vec<IndexedPack>) -> Result<u64> {
    packs.sort_by_key(|p| p.id);
    let mut written = 0u64;
    for group in index_groups(&packs) {
        let mut nonce = 0;
        loop {
            let bytes = encode_index(group, nonce);
            let len = bytes.len() as u64;
            let key = ObjectKey::Index(IndexId::of(&bytes));
            match backend.put_new(&key, Bytes::from(bytes)).await {
                Ok(_) => {
                    written += len;
                    break;
                }
                Err(Error::Corrupt { object, .. }) if nonce == 0 => {
                    tracing::warn!(
                        "{object} is damaged; storing that index anew under another nonce"
                    );
                    nonce = random_nonce()?;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(written)
}

/// Splits packs into runs whose index objects stay under [`MAX_INDEX_LEN`].
fn index_groups(packs: &[IndexedPack]) -> Vec<&[IndexedPack]> {
    let mut groups = Vec::new();
    let (mut start, mut len) = (0, 0usize);
    for (i, p) in packs.iter().enumerate() {
        // pack id, length, trailer length, then the trailer (see `encode_index`)
        let entry = 44 + 16 + p.trailer.frames.len() * 9 + p.trailer.blobs.len() * 36;
        if i > start && len + entry > MAX_INDEX_LEN {
            groups.push(&packs[start..i]);
            (start, len) = (i, 0);
        }
        len += entry;
    }
    if start < packs.len() {
        groups.push(&packs[start..]);
    }
    groups
}
