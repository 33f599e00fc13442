//! Helpers for the `cairn` CLI tests: run the binary, make repositories,
//! and take listings of repositories and restored trees to compare.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    missing_debug_implementations
)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;

/// Environment variables that would change what `cairn` does behind a test's back.
const CAIRN_ENV: &[&str] = &[
    "CAIRN_REPO",
    "CAIRN_KEY_FILE",
    "CAIRN_TRUST",
    "CAIRN_HOST",
    "CAIRN_S3_ENDPOINT",
    "CAIRN_S3_REGION",
    "CAIRN_TIMEOUT",
    "CAIRN_LOG",
];

/// The `cairn` binary with a clean `CAIRN_*` environment and a time limit.
pub fn cairn() -> Command {
    let mut c = Command::cargo_bin("cairn").unwrap();
    for v in CAIRN_ENV {
        c.env_remove(v);
    }
    c.timeout(Duration::from_secs(60));
    c
}

/// `cairn` with these arguments.
pub fn cairn_args<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = cairn();
    c.args(args);
    c
}

/// What a run of `cairn` did.
#[derive(Debug)]
pub struct Run {
    /// The exit code (-1 when killed by a signal).
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn stdout_str(&self) -> String {
        String::from_utf8(self.stdout.clone()).unwrap()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout_str()))
    }

    /// Panics, showing everything, unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code,
            code,
            "expected exit {code}, got {}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.code,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        );
        self
    }

    /// Panics unless stderr contains every fragment.
    #[track_caller]
    pub fn stderr_has(self, fragments: &[&str]) -> Run {
        for f in fragments {
            assert!(
                self.stderr.contains(f),
                "stderr lacks {f:?}:\n{}",
                self.stderr
            );
        }
        self
    }

    /// Panics unless stdout contains every fragment.
    #[track_caller]
    pub fn stdout_has(self, fragments: &[&str]) -> Run {
        let out = String::from_utf8_lossy(&self.stdout).into_owned();
        for f in fragments {
            assert!(out.contains(f), "stdout lacks {f:?}:\n{out}");
        }
        self
    }
}

/// Runs a command to completion.
pub fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a command that must succeed.
#[track_caller]
pub fn ok(cmd: &mut Command) -> Run {
    run(cmd).expect_code(0)
}

/// Generates a key at `path` and returns its public key as printed.
pub fn generate_key(path: &Path) -> String {
    let out = ok(cairn_args(["key", "generate", "--output"]).arg(path)).stdout_str();
    out.trim_end().to_string()
}

/// A temporary directory holding a repository (`repo/`) initialised to
/// trust one key (`key`).
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub repo: PathBuf,
    pub key: PathBuf,
    pub public: String,
}

impl Fixture {
    /// A new repository trusting a new key.
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("key");
        let public = generate_key(&key);
        let repo = tmp.path().join("repo");
        ok(cairn_args(["init", "--trust", &public])
            .arg("--repo")
            .arg(&repo));
        Fixture {
            tmp,
            repo,
            key,
            public,
        }
    }

    /// A path inside the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `cairn SUBCOMMAND --repo REPO`.
    pub fn cmd(&self, subcommand: &str) -> Command {
        let mut c = cairn();
        c.arg(subcommand).arg("--repo").arg(&self.repo);
        c
    }

    /// `cairn backup --repo REPO --key KEY --host test`.
    pub fn backup(&self) -> Command {
        let mut c = self.cmd("backup");
        c.arg("--key").arg(&self.key).args(["--host", "test"]);
        c
    }

    /// Backs `data` up from stdin as item `name`; returns the `--json` summary.
    pub fn backup_bytes(&self, name: &str, data: &[u8], extra: &[&str]) -> Value {
        ok(self
            .backup()
            .args(["-", "--name", name, "--json"])
            .args(extra)
            .write_stdin(data))
        .json()
    }

    /// `cairn snapshots --json`, parsed.
    pub fn snapshots(&self, extra: &[&str]) -> Vec<Value> {
        let v = ok(self.cmd("snapshots").arg("--json").args(extra)).json();
        v.as_array().unwrap().clone()
    }

    /// `cairn restore SELECTOR --stdout [--item ITEM]`, which must succeed.
    pub fn restore_stdout(&self, selector: &str, item: Option<&str>) -> Vec<u8> {
        let mut c = self.cmd("restore");
        c.args([selector, "--stdout"]);
        if let Some(item) = item {
            c.args(["--item", item]);
        }
        ok(&mut c).stdout
    }

    /// Every file under the repository with its bytes.
    pub fn contents(&self) -> Contents {
        files_under(&self.repo)
    }
}

/// Files (relative path with `/`) and their bytes.
pub type Contents = BTreeMap<String, Vec<u8>>;

/// Every regular file under `dir`, by relative path.
pub fn files_under(dir: &Path) -> Contents {
    fn walk(root: &Path, dir: &Path, out: &mut Contents) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_str().unwrap();
                out.insert(rel.replace('\\', "/"), std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = Contents::new();
    walk(dir, dir, &mut out);
    out
}

/// Names only, for readable assertion messages.
pub fn names(c: &Contents) -> Vec<&str> {
    c.keys().map(String::as_str).collect()
}

/// Exactly the same files with the same bytes.
#[track_caller]
pub fn assert_unchanged(before: &Contents, after: &Contents) {
    assert_eq!(
        names(after),
        names(before),
        "the repository's files changed"
    );
    for (k, v) in before {
        assert!(after[k] == *v, "{k} changed");
    }
}

/// Every file as it was; new files only under `packs/` (unreferenced packs
/// left by a failed backup are garbage for `gc`, not damage).
#[track_caller]
pub fn assert_unchanged_but_new_packs(before: &Contents, after: &Contents) {
    for (k, v) in before {
        let now = after
            .get(k)
            .unwrap_or_else(|| panic!("{k} disappeared; now: {:?}", names(after)));
        assert!(now == v, "{k} changed");
    }
    for k in after.keys().filter(|k| !before.contains_key(*k)) {
        assert!(k.starts_with("packs/"), "new object {k} outside packs/");
    }
}

/// The largest pack file of a repository.
pub fn largest_pack(repo: &Path) -> PathBuf {
    files_under(repo)
        .iter()
        .filter(|(k, _)| k.starts_with("packs/"))
        .max_by_key(|(_, v)| v.len())
        .map(|(k, _)| repo.join(k))
        .unwrap()
}

/// What a restored (or source) tree holds at one path.
#[derive(Debug, PartialEq, Eq)]
pub enum Node {
    File {
        mode: u32,
        mtime: std::time::SystemTime,
        bytes: Vec<u8>,
    },
    Dir {
        mode: u32,
        mtime: std::time::SystemTime,
    },
    Symlink {
        target: PathBuf,
    },
}

/// Everything under `dir` (not `dir` itself): kinds, modes, times, bytes, link targets.
pub fn tree(dir: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let node = if meta.file_type().is_symlink() {
                Node::Symlink {
                    target: std::fs::read_link(&path).unwrap(),
                }
            } else if meta.is_dir() {
                walk(root, &path, out);
                Node::Dir {
                    mode,
                    mtime: meta.modified().unwrap(),
                }
            } else {
                Node::File {
                    mode,
                    mtime: meta.modified().unwrap(),
                    bytes: std::fs::read(&path).unwrap(),
                }
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Makes every directory under `dir` writable again (so the temporary
/// directory can be removed by a non-root user).
pub fn make_writable(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            make_writable(&path);
        }
    }
}

/// Deterministic, incompressible bytes (xorshift64).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A name unlikely to be used by any other test run (S3 prefixes).
pub fn unique_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let seed = format!(
        "{nanos}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    );
    cairn_store::id::BlobId::of(seed.as_bytes()).to_hex()[..16].to_string()
}

/// Whether `s` is 64 lowercase hex characters.
pub fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A string field of a JSON value.
#[track_caller]
pub fn str_field<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string in {v:#}"))
}

/// The ids of snapshots as listed.
pub fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|s| str_field(s, "id").to_string())
        .collect()
}

/// The S3 base URL to test against, if any (`tests/run` sets it).
pub fn s3_base() -> Option<String> {
    match std::env::var("CAIRN_TEST_S3") {
        Ok(url) => Some(url.trim_end_matches('/').to_string()),
        Err(_) if std::env::var("CAIRN_TEST_REQUIRE_S3").as_deref() == Ok("1") => panic!(
            "CAIRN_TEST_REQUIRE_S3=1 but CAIRN_TEST_S3 is not set: start the services with tests/run"
        ),
        Err(_) => {
            eprintln!("note: S3 CLI tests skipped (CAIRN_TEST_S3 unset); `tests/run` runs them");
            None
        }
    }
}

/// The throw-away sshd from `tests/services.sh`: an `ssh://` URL of a
/// directory for test repositories and that directory on this machine.
/// `CAIRN_SSH_COMMAND` (exported with it) holds the client's key and
/// known host.
pub fn ssh_base() -> Option<(String, PathBuf)> {
    match (
        std::env::var("CAIRN_TEST_SSH"),
        std::env::var("CAIRN_TEST_SSH_DIR"),
    ) {
        (Ok(url), Ok(dir)) => Some((url.trim_end_matches('/').to_string(), PathBuf::from(dir))),
        _ if std::env::var("CAIRN_TEST_REQUIRE_SSH").as_deref() == Ok("1") => panic!(
            "CAIRN_TEST_REQUIRE_SSH=1 but CAIRN_TEST_SSH is not set: start the services with tests/run"
        ),
        _ => {
            eprintln!(
                "note: ssh:// CLI tests skipped (CAIRN_TEST_SSH unset); `tests/run` runs them"
            );
            None
        }
    }
}
