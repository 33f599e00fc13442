//! Fuzzing of `cairn serve`'s request path, end to end: raw HTTP/1.1
//! requests, mutated from a few valid ones (every method, every role, a
//! range, a listing, a chunked upload), sent to a running server. After each
//! request the server must still answer a listing, must not have logged a
//! panic, and its peak resident memory must stay under a bound.
//!
//! `CAIRN_FUZZ_ITERATIONS=N` sets the number of mutated requests (default
//! 300) and `CAIRN_FUZZ_SEED` the random stream; see `store/tests/fuzz.rs`
//! for the decoders behind it.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

const ADMIN: &str = "admin-token-aaaaaaaaaaaaaaaaaaaa";
const APPEND: &str = "append-token-bbbbbbbbbbbbbbbbbbb";
const READ: &str = "read-token-cccccccccccccccccccccc";

/// The server's peak resident memory may not pass this (it serves small
/// objects; its largest buffer is a request body, bounded by the server).
const MAX_PEAK_RSS_KIB: u64 = 512 * 1024;

/// A running `cairn serve` whose log is kept; stopped on drop.
struct Server {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<u8>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(repo: &std::path::Path, tokens: &std::path::Path) -> Server {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("cairn"))
            .args(["serve", "--listen", "127.0.0.1:0", "--repo"])
            .arg(repo)
            .arg("--tokens")
            .arg(tokens)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let port = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))
            .and_then(|a| a.trim_end_matches('/').rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Server { child, port, log }
    }

    /// Sends raw bytes and reads the answer: what comes within a short
    /// wait, then (the request may be incomplete, or keep the connection
    /// open) the rest after half-closing.
    fn send(&self, request: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let _ = s.write_all(request);
        let mut out = Vec::new();
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let _ = s.read_to_end(&mut out);
        let _ = s.shutdown(Shutdown::Write);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.read_to_end(&mut out);
        out
    }

    /// Whether the server still answers a listing with 200.
    fn alive(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let request = format!(
            "GET /?list=snapshots/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READ}\r\nConnection: close\r\n\r\n"
        );
        let mut answer = Vec::new();
        let _ = s
            .write_all(request.as_bytes())
            .and_then(|()| s.read_to_end(&mut answer));
        answer.starts_with(b"HTTP/1.1 200")
    }

    fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        String::from_utf8_lossy(&log[log.len().saturating_sub(2000)..]).into_owned()
    }

    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Pieces of HTTP that take a parser down unusual paths.
const TOKENS: &[&str] = &[
    "0",
    "1",
    "-1",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551614",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999",
    "bytes=",
    "bytes=0-",
    "bytes=-5",
    "bytes=5-4",
    "bytes=0-0,1-1",
    "/",
    "//",
    "..",
    "/../",
    "%2e%2e",
    "%2F",
    "%00",
    "?",
    "?list=",
    "?list=..",
    "#",
    "\\",
    " ",
    "\t",
    "\r\n",
    "\n",
    "\r\n\r\n",
    "\0",
    ":",
    "Bearer ",
    "Authorization: Bearer admin-token-aaaaaaaaaaaaaaaaaaaa\r\n",
    "Range: bytes=0-18446744073709551614\r\n",
    "Content-Length: 0\r\n",
    "Content-Length: 18446744073709551615\r\n",
    "Transfer-Encoding: chunked\r\n",
    "If-None-Match: *\r\n",
    "ffffffffffffffff\r\n",
    "HTTP/1.0",
    "HTTP/2",
    "GET",
    "PUT",
    "DELETE",
    "HEAD",
    "OPTIONS",
    "é",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(3) {
        match rng.below(7) {
            0 if !b.is_empty() => {
                let at = rng.below(b.len());
                b[at] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let at = rng.below(b.len());
                b.truncate(at);
            }
            2 if !b.is_empty() => {
                let start = rng.below(b.len());
                let end = start + rng.below((b.len() - start).min(32) + 1);
                b.drain(start..end);
            }
            3 => {
                // Replace a number (a length, a range bound) or a word.
                let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                let at = rng.below(b.len() + 1);
                let mut end = at;
                while end < b.len() && b[end].is_ascii_alphanumeric() {
                    end += 1;
                }
                b.splice(at..end, token.iter().copied());
            }
            4 | 5 => {
                let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                let at = rng.below(b.len() + 1);
                b.splice(at..at, token.iter().copied());
            }
            _ => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(b.len() + 1);
                let from = rng.below(other.len() + 1);
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
        }
    }
    b
}

fn seeds(snapshot: &str) -> Vec<Vec<u8>> {
    let h = |method: &str, path: &str, token: &str, extra: &str, body: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let snap = format!("/snapshots/{snapshot}");
    let numbers = [
        "0",
        "1",
        "17",
        "4294967296",
        "18446744073709551614",
        "18446744073709551615",
    ];
    let mut ranges = Vec::new();
    for a in numbers {
        for b in numbers {
            let range = format!("Range: bytes={a}-{b}\r\n");
            ranges.push(h("GET", &snap, READ, &range, ""));
        }
    }
    ranges.push(h("GET", &snap, READ, "Range: bytes=-5\r\n", ""));
    ranges.push(h("GET", &snap, READ, "Range: bytes=0-1,3-4\r\n", ""));
    let requests = vec![
        h("GET", "/config", ADMIN, "Range: bytes=0-9\r\n", ""),
        h("HEAD", "/config", READ, "", ""),
        h("GET", &snap, READ, "Range: bytes=5-400\r\n", ""),
        h("GET", "/?list=snapshots/", READ, "", ""),
        h("GET", "/?list=", APPEND, "", ""),
        h("PUT", "/locks/fuzz-1", APPEND, "If-None-Match: *\r\n", "hello"),
        h("PUT", "/gc/fuzz-2", ADMIN, "", "some bytes"),
        h("DELETE", "/locks/fuzz-1", APPEND, "", ""),
        h("GET", "/packs/ab/abcd", "wrong-token-dddddddddddddddddd", "", ""),
        format!(
            "PUT /index/fuzz-3 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {APPEND}\r\nIf-None-Match: *\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        .into_bytes(),
    ];
    requests.into_iter().chain(ranges).collect()
}

fn iterations() -> u64 {
    std::env::var("CAIRN_FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

fn token_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("tokens");
    std::fs::write(
        &path,
        format!("admin {ADMIN}\nappend {APPEND}\nread {READ}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn panicked(server: &Server) -> Option<String> {
    let log = server.log.lock().unwrap();
    let text = String::from_utf8_lossy(&log);
    text.lines()
        .find(|l| l.contains("panicked"))
        .map(str::to_string)
}

#[test]
fn fuzz_serve_requests() {
    let f = Fixture::new();
    let snapshot = f.backup_bytes("a", b"some data to serve", &[])["snapshot"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| "00".into());
    let server = Server::start(&f.repo, &token_file(f.tmp.path()));
    assert!(server.alive(), "the server answers before fuzzing");
    let seeds = seeds(&snapshot);
    let base = std::env::var("CAIRN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0u64);
    let mut rng = Rng(base ^ 0x7365_7276_6566_757a);
    let inputs = seeds
        .clone()
        .into_iter()
        .chain((0..iterations()).map(|_| mutate(&mut rng, &seeds)));
    let mut count = 0;
    for request in inputs {
        count += 1;
        let _ = server.send(&request);
        let alive = server.alive();
        let panic = panicked(&server);
        let rss = server.peak_rss_kib();
        assert!(
            alive && panic.is_none() && rss <= MAX_PEAK_RSS_KIB,
            "request {count} (alive: {alive}, panic: {panic:?}, peak RSS {rss} KiB):\n{}\nhex: {}\nserver log ends: {}",
            String::from_utf8_lossy(&request).escape_debug(),
            hex_of(&request),
            server.log_tail()
        );
    }
    eprintln!(
        "fuzz target serve requests: {count} requests, peak RSS {} KiB",
        server.peak_rss_kib()
    );
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
