//! `cairn serve`: roles over HTTP, and backup, restore and replication
//! through it.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use support::*;

const ADMIN: &str = "admin-token-aaaaaaaaaaaaaaaaaaaa";
const APPEND: &str = "append-token-bbbbbbbbbbbbbbbbbbb";
const READ: &str = "read-token-cccccccccccccccccccccc";

/// A running `cairn serve`; stopped (SIGTERM) on drop.
struct Server {
    child: Child,
    url: String,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn token_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tokens");
    std::fs::write(
        &path,
        format!("# roles\nadmin {ADMIN}\nappend {APPEND}\nread {READ}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn start(repo: &Path, tokens: &Path) -> Server {
    start_with(repo, tokens, &[])
}

fn start_with(repo: &Path, tokens: &Path, extra: &[&std::ffi::OsStr]) -> Server {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("cairn"))
        .args(["serve", "--listen", "127.0.0.1:0", "--repo"])
        .arg(repo)
        .arg("--tokens")
        .arg(tokens)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    stderr.read_line(&mut line).unwrap();
    // Keep reading its log, so that the server never writes to a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    Server { child, url, port }
}

/// A raw HTTP/1.1 request (paths exactly as given, `..` included); the status.
fn status(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &str,
    body: &[u8],
) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let head = String::from_utf8_lossy(&out[..out.len().min(64)]).into_owned();
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn roles_are_enforced_over_http() {
    let f = Fixture::new();
    f.backup_bytes("a", b"some data", &[]);
    let server = start(&f.repo, &token_file(f.tmp.path()));
    let snapshot = std::fs::read_dir(f.repo.join("snapshots"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    let key = format!("/snapshots/{snapshot}");
    let p = server.port;
    let create = "If-None-Match: *\r\n";
    // No token, a wrong token: 401. A path with `..`: 400.
    assert_eq!(status(p, "GET", "/config", None, "", b""), 401);
    assert_eq!(
        status(
            p,
            "GET",
            "/config",
            Some("wrong-token-ddddddddddddddddd"),
            "",
            b""
        ),
        401
    );
    assert_eq!(
        status(p, "GET", "/snapshots/../config", Some(READ), "", b""),
        400
    );
    assert_eq!(
        status(p, "GET", "/../../etc/passwd", Some(ADMIN), "", b""),
        400
    );
    // Read: reads, never writes.
    assert_eq!(status(p, "GET", &key, Some(READ), "", b""), 200);
    assert_eq!(
        status(p, "PUT", "/snapshots/00", Some(READ), create, b"x"),
        403
    );
    assert_eq!(status(p, "DELETE", &key, Some(READ), "", b""), 403);
    // Append: creates, but neither deletes nor overwrites.
    let before = std::fs::read(f.repo.join(&key[1..])).unwrap();
    assert_eq!(status(p, "DELETE", &key, Some(APPEND), "", b""), 403);
    assert_eq!(status(p, "PUT", &key, Some(APPEND), "", b"forged"), 403);
    assert_eq!(status(p, "PUT", &key, Some(APPEND), create, b"forged"), 412);
    assert_eq!(std::fs::read(f.repo.join(&key[1..])).unwrap(), before);
    assert_eq!(
        status(p, "PUT", "/gc/note-1", Some(APPEND), create, b"new"),
        201
    );
    // Admin: may delete.
    assert_eq!(status(p, "DELETE", "/gc/note-1", Some(ADMIN), "", b""), 204);
    // An oversized body is refused before it is read.
    let mut s = TcpStream::connect(("127.0.0.1", p)).unwrap();
    write!(
        s,
        "PUT /gc/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: 999999999999\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head[9..12], b"413");
}

#[test]
fn a_terminated_server_stops_cleanly() {
    let f = Fixture::new();
    let mut server = start(&f.repo, &token_file(f.tmp.path()));
    assert_eq!(
        status(server.port, "GET", "/config", Some(READ), "", b""),
        200
    );
    Command::new("kill")
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn a_terminated_server_finishes_the_write_in_flight() {
    let f = Fixture::new();
    let mut server = start(&f.repo, &token_file(f.tmp.path()));
    let body = random_bytes(1 << 20, 41);
    // Half of a PUT's body is sent, then the server is told to stop.
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        s,
        "PUT /gc/in-flight HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {APPEND}\r\n\
         If-None-Match: *\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body[..body.len() / 2]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    Command::new("kill")
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    // It stops accepting connections…
    let refused = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        TcpStream::connect(("127.0.0.1", server.port)).is_err()
    });
    assert!(
        refused,
        "the server still accepts connections after SIGTERM"
    );
    // …but the request in flight completes and is stored whole.
    s.write_all(&body[body.len() / 2..]).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head[9..12], b"201", "{}", String::from_utf8_lossy(&head));
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(std::fs::read(f.repo.join("gc/in-flight")).unwrap() == body);
}

#[test]
fn backup_restore_and_replication_through_serve() {
    let f = Fixture::new();
    let server = start(&f.repo, &token_file(f.tmp.path()));
    let data = random_bytes(3 << 20, 7);
    // The backup job's token may append.
    let mut c = cairn_args(["backup", "--repo", &server.url, "-", "--name", "db"]);
    c.arg("--key")
        .arg(&f.key)
        .env("CAIRN_TOKEN", APPEND)
        .write_stdin(data.clone());
    ok(&mut c);
    // ... but not delete history.
    let mut c = cairn_args(["backup", "--repo", &server.url, "-", "--name", "db"]);
    c.arg("--key")
        .arg(&f.key)
        .env("CAIRN_TOKEN", APPEND)
        .write_stdin(b"day two".to_vec());
    ok(&mut c);
    let mut c = cairn_args([
        "forget",
        "--repo",
        &server.url,
        "--keep-last",
        "1",
        "--force",
    ]);
    c.env("CAIRN_TOKEN", APPEND);
    run(&mut c).expect_code(10);
    assert_eq!(f.snapshots(&[]).len(), 2, "nothing was deleted");
    // A reader restores and verifies.
    let first = f.snapshots(&[])[0]["id"].as_str().unwrap().to_string();
    let mut c = cairn_args(["restore", "--repo", &server.url, &first, "--stdout"]);
    c.env("CAIRN_TOKEN", READ);
    assert!(ok(&mut c).stdout == data);
    let mut c = cairn_args(["verify", "--repo", &server.url, "--read-data"]);
    c.env("CAIRN_TOKEN", READ);
    ok(&mut c);
    // serve → local replication.
    let local = f.path("replica").to_str().unwrap().to_string();
    let mut c = cairn_args([
        "replicate",
        "--from",
        &server.url,
        "--to",
        &local,
        "--verify",
    ]);
    c.env("CAIRN_TOKEN", READ);
    ok(&mut c);
    assert!(
        ok(&mut cairn_args([
            "restore", "--repo", &local, &first, "--stdout"
        ]))
        .stdout
            == data
    );
    // A missing token is refused with the access-denied code.
    let mut c = cairn_args(["snapshots", "--repo", &server.url]);
    c.env_remove("CAIRN_TOKEN");
    run(&mut c).expect_code(10);
    let mut c = cairn_args(["snapshots", "--repo", &server.url]);
    c.env("CAIRN_TOKEN", "wrong-token-eeeeeeeeeeeeeeeeeeee");
    run(&mut c).expect_code(10);
}

#[test]
fn token_files_are_checked_at_start() {
    let f = Fixture::new();
    let tokens = token_file(f.tmp.path());
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    run(cairn_args(["serve", "--listen", "127.0.0.1:0", "--repo"])
        .arg(&f.repo)
        .arg("--tokens")
        .arg(&tokens))
    .expect_code(2)
    .stderr_has(&["chmod 600"]);
    std::fs::write(&tokens, "append short\n").unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    run(cairn_args(["serve", "--listen", "127.0.0.1:0", "--repo"])
        .arg(&f.repo)
        .arg("--tokens")
        .arg(&tokens))
    .expect_code(2)
    .stderr_has(&["24"]);
}

#[test]
fn tls_with_a_private_certificate() {
    let f = Fixture::new();
    // A private CA and a server certificate it signs.
    let dir = f.tmp.path();
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            "cert.pem",
            "-extfile",
            "ext",
        ],
    ];
    let made = steps.iter().all(|args| {
        Command::new("openssl")
            .args(*args)
            .current_dir(dir)
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !made {
        assert!(
            std::env::var_os("CAIRN_TEST_REQUIRE_S3").is_none(),
            "openssl is needed for the TLS test"
        );
        eprintln!("skipped: no openssl");
        return;
    }
    let (cert, key, ca) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    );
    let server = start_with(
        &f.repo,
        &token_file(f.tmp.path()),
        &[
            "--tls-cert".as_ref(),
            cert.as_os_str(),
            "--tls-key".as_ref(),
            key.as_os_str(),
        ],
    );
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let data = random_bytes(100_000, 9);
    let mut c = cairn_args(["backup", "--repo", &server.url, "-", "--name", "db"]);
    c.arg("--key")
        .arg(&f.key)
        .env("CAIRN_TOKEN", APPEND)
        .env("CAIRN_CA_CERT", &ca);
    ok(c.write_stdin(data.clone()));
    let mut c = cairn_args(["restore", "--repo", &server.url, "latest", "--stdout"]);
    c.env("CAIRN_TOKEN", READ).env("CAIRN_CA_CERT", &ca);
    assert!(ok(&mut c).stdout == data);
    // Without trusting the certificate, the client refuses the server.
    let mut c = cairn_args(["snapshots", "--repo", &server.url]);
    c.env("CAIRN_TOKEN", READ).env_remove("CAIRN_CA_CERT");
    run(&mut c).expect_code(4).stderr_has(&["CAIRN_CA_CERT"]);
}
