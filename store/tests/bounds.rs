//! Every read from a store or server is bounded before it is buffered:
//! objects over their kind's limit (format-spec §14) are refused by their
//! declared length, bodies longer than declared or than the range asked for
//! are cut off as they arrive, and listings are bounded in lines and entries.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cairn_store::backend::http::ServeStore;
use cairn_store::backend::{Backend, ObjectDir, ObjectKey};
use cairn_store::error::ErrorKind;
use cairn_store::id::{IndexId, PackId, SnapshotId};
use cairn_store::repo::Repository;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HUGE: u64 = 3 << 30;

/// A local repository directory with `config` and one sparse 3 GiB object.
fn local_with_huge(rel: &str) -> (tempfile::TempDir, Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::File::create(&path).unwrap().set_len(HUGE).unwrap();
    let backend =
        Backend::connect(dir.path().to_str().unwrap(), &Default::default(), false).unwrap();
    (dir, backend)
}

#[track_caller]
fn assert_refused(err: &cairn_store::error::Error, object: &str, limit: u64) {
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let text = err.to_string();
    assert!(text.contains(object), "object not named: {text}");
    assert!(text.contains(&format!("{HUGE} bytes")), "no length: {text}");
    assert!(
        text.contains(&format!("{limit}-byte limit")),
        "no limit: {text}"
    );
}

#[tokio::test]
async fn huge_local_objects_are_refused_by_their_length() {
    let (_dir, backend) = local_with_huge("config");
    let err = backend.get(&ObjectKey::Config).await.unwrap_err();
    assert_refused(&err, "config", 1 << 20);
    let err = Repository::open(backend).await.unwrap_err();
    assert_refused(&err, "config", 1 << 20);

    let id = SnapshotId::of(b"huge");
    let (_dir, backend) = local_with_huge(&format!("snapshots/{id}"));
    let err = backend.get(&ObjectKey::Snapshot(id)).await.unwrap_err();
    assert_refused(&err, &id.to_string(), 108 + (64 << 20));

    let id = IndexId::of(b"huge");
    let (_dir, backend) = local_with_huge(&format!("index/{id}"));
    let err = backend.get(&ObjectKey::Index(id)).await.unwrap_err();
    assert_refused(&err, &id.to_string(), 64 << 20);

    let id = PackId::of(b"huge");
    let hex = id.to_hex();
    let (_dir, backend) = local_with_huge(&format!("packs/{}/{hex}", &hex[..2]));
    let err = backend.get(&ObjectKey::Pack(id)).await.unwrap_err();
    assert_refused(&err, &hex, 128 << 20);
    // A range of it is still read (a pack's frames are read by range).
    let bytes = backend
        .get_range(&ObjectKey::Pack(id), 5..21)
        .await
        .unwrap();
    assert_eq!(bytes.len(), 16);
}

#[tokio::test]
async fn a_caller_limit_below_the_kinds_is_kept() {
    let backend = Backend::new(Arc::new(object_store::memory::InMemory::new()), "memory:");
    let key = ObjectKey::Gc("condemned-1".into());
    backend
        .put_new(&key, Bytes::from(vec![7u8; 1000]))
        .await
        .unwrap();
    assert_eq!(backend.get_bounded(&key, 1000).await.unwrap().len(), 1000);
    let err = backend.get_bounded(&key, 999).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("999-byte limit"), "{err}");
    // A range past the end is truncation.
    let err = backend.get_range(&key, 900..1100).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("truncated"), "{err}");
}

/// What the hostile server answers to every request.
#[derive(Debug, Clone, Copy)]
enum Hostile {
    /// A small declared length, then an endless chunked body.
    EndlessBody,
    /// A declared length of 3 GiB, then an endless chunked body.
    HugeDeclared,
    /// A 206 answer of 100 MB more than asked for.
    RangeExtra,
    /// A listing that is one endless line.
    EndlessLine,
    /// A listing of endless valid lines.
    EndlessEntries,
}

/// The most any one answer sends: the server's own loop is bounded.
const SEND_CAP: u64 = 512 << 20;
/// What a bounded reader may let through before it hangs up (its limit, plus
/// what the kernel's socket buffers and the HTTP client hold).
const READ_BOUND: u64 = 64 << 20;

/// Serves `mode` on 127.0.0.1 until the test ends; counts the bytes sent.
async fn hostile_server(mode: Hostile) -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                // Read the request head (bounded), then answer.
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = answer(&mut socket, mode, &counter).await;
            });
        }
    });
    (format!("http://{addr}/"), sent)
}

async fn answer(
    socket: &mut tokio::net::TcpStream,
    mode: Hostile,
    sent: &AtomicU64,
) -> std::io::Result<()> {
    let chunked = |size: u64| {
        format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-object-size: {size}\r\n\
             x-object-modified-ms: 0\r\n\r\n"
        )
    };
    let (head, piece): (String, Vec<u8>) = match mode {
        Hostile::EndlessBody => (chunked(100), vec![b'x'; 65536]),
        Hostile::HugeDeclared => (chunked(HUGE), vec![b'x'; 65536]),
        Hostile::EndlessLine => (chunked(0), vec![b'x'; 65536]),
        Hostile::EndlessEntries => {
            let id = IndexId::of(b"entry");
            let line = format!("{{\"key\":\"index/{id}\",\"size\":1,\"modified_ms\":0}}\n");
            (chunked(0), line.repeat(512).into_bytes())
        }
        Hostile::RangeExtra => {
            let len = 100 + 100_000_000u64;
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\ncontent-length: {len}\r\n\
                 content-range: bytes 0-99/1000\r\nx-object-size: 1000\r\n\r\n"
            );
            socket.write_all(head.as_bytes()).await?;
            let piece = vec![b'y'; 65536];
            let mut left = len;
            while left > 0 {
                let n = left.min(piece.len() as u64) as usize;
                socket.write_all(&piece[..n]).await?;
                sent.fetch_add(n as u64, Ordering::Relaxed);
                left -= n as u64;
            }
            return Ok(());
        }
    };
    socket.write_all(head.as_bytes()).await?;
    let frame = [
        format!("{:x}\r\n", piece.len()).into_bytes(),
        piece,
        b"\r\n".to_vec(),
    ]
    .concat();
    while sent.load(Ordering::Relaxed) < SEND_CAP {
        socket.write_all(&frame).await?;
        sent.fetch_add(frame.len() as u64, Ordering::Relaxed);
    }
    socket.write_all(b"0\r\n\r\n").await
}

async fn hostile_backend(mode: Hostile) -> (Backend, Arc<AtomicU64>) {
    let (url, sent) = hostile_server(mode).await;
    let store = ServeStore::new(&url, "token".into(), None, Duration::from_secs(60)).unwrap();
    (Backend::new(Arc::new(store), url), sent)
}

#[track_caller]
fn assert_bounded(sent: &AtomicU64) {
    let sent = sent.load(Ordering::Relaxed);
    assert!(
        sent < READ_BOUND,
        "the client read on: the server sent {sent} bytes"
    );
}

#[tokio::test]
async fn an_endless_body_is_cut_off_after_its_declared_length() {
    let (backend, sent) = hostile_backend(Hostile::EndlessBody).await;
    let err = backend.get(&ObjectKey::Config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("more than 100 bytes"), "{err}");
    assert_bounded(&sent);
}

#[tokio::test]
async fn a_huge_declared_length_is_refused_before_the_body() {
    let (backend, sent) = hostile_backend(Hostile::HugeDeclared).await;
    let err = backend.get(&ObjectKey::Config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("1048576-byte limit"), "{err}");
    assert_bounded(&sent);
}

#[tokio::test]
async fn a_range_answer_with_extra_bytes_is_refused_without_buffering_them() {
    let (backend, sent) = hostile_backend(Hostile::RangeExtra).await;
    let key = ObjectKey::Pack(PackId::of(b"p"));
    let err = backend.get_range(&key, 0..100).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("more than 100 bytes"), "{err}");
    assert_bounded(&sent);
}

#[tokio::test]
async fn an_endless_listing_line_is_refused() {
    let (backend, sent) = hostile_backend(Hostile::EndlessLine).await;
    let err = backend.list(ObjectDir::Index).await.unwrap_err();
    assert!(err.to_string().contains("4096-byte limit"), "{err}");
    assert_bounded(&sent);
}

#[tokio::test]
async fn an_endless_listing_is_refused_at_its_entry_limit() {
    let (backend, sent) = hostile_backend(Hostile::EndlessEntries).await;
    let backend = backend.with_max_list_entries(10_000);
    let err = backend.list(ObjectDir::Index).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("more than 10000 entries"), "{err}");
    assert_bounded(&sent);
}
