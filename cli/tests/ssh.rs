//! Repositories at `ssh://` URLs, against a real sshd on loopback
//! (`tests/services.sh` starts it with throw-away keys).
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use support::*;

const UNREACHABLE: i32 = 4;
const NOT_FOUND: i32 = 5;
const ACCESS_DENIED: i32 = 10;
const ALREADY_EXISTS: i32 = 11;

/// `cairn ARGS...` with `CAIRN_SSH_COMMAND` replaced.
fn with_ssh(command: &str, args: &[&str]) -> assert_cmd::Command {
    let mut c = cairn_args(args);
    c.env("CAIRN_SSH_COMMAND", command);
    c
}

#[test]
fn a_repository_on_an_ssh_server_backs_up_restores_forgets_and_collects() {
    let Some((base, dir)) = ssh_base() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key");
    let public = generate_key(&key);
    let name = format!("repo-{}", unique_name());
    let url = format!("{base}/{name}");
    let key_s = key.to_str().unwrap();
    ok(&mut cairn_args([
        "init", "--trust", &public, "--repo", &url,
    ]));
    run(&mut cairn_args([
        "init", "--trust", &public, "--repo", &url,
    ]))
    .expect_code(ALREADY_EXISTS)
    .stderr_has(&[&url]);

    // A tree of files, then the same tree with new content in big.bin and
    // one small file changed.
    let src = tmp.path().join("data/volume");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("big.bin"), random_bytes(5 << 20, 31)).unwrap();
    std::fs::write(src.join("sub/small.txt"), b"small\n").unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    let backup = || {
        let mut c = cairn_args(["backup", "--repo", &url, "--key", key_s, "--json"]);
        c.arg(&src);
        ok(&mut c).json()
    };
    let first = backup();
    let unchanged = backup();
    assert_eq!(unchanged["new_blobs"], 0, "{unchanged}");
    std::fs::write(src.join("big.bin"), random_bytes(2 << 20, 32)).unwrap();
    std::fs::write(src.join("sub/small.txt"), b"changed\n").unwrap();
    backup();

    let target = tmp.path().join("restored");
    ok(cairn_args(["restore", "--repo", &url, "latest", "--target"]).arg(&target));
    assert!(files_under(&tmp.path().join("data")) == files_under(&target));
    let id = first["snapshot"].as_str().unwrap();
    let old = tmp.path().join("old");
    ok(cairn_args([
        "restore",
        "--repo",
        &url,
        id,
        "--item",
        "volume/big.bin",
        "--output",
    ])
    .arg(&old));
    assert!(std::fs::read(&old).unwrap() == random_bytes(5 << 20, 31));
    ok(&mut cairn_args(["verify", "--repo", &url, "--read-data"]));

    // Keep the newest only and collect: the old big.bin's packs are deleted
    // over SFTP, the newest still restores, no staging file is left.
    ok(&mut cairn_args([
        "forget",
        "--repo",
        &url,
        "--keep-last",
        "1",
    ]));
    let gc = ok(&mut cairn_args([
        "gc", "--repo", &url, "--grace", "0s", "--json",
    ]))
    .json();
    assert!(gc["deleted_packs"].as_u64().unwrap() >= 1, "{gc}");
    let stats = ok(&mut cairn_args(["stats", "--repo", &url, "--json"])).json();
    assert_eq!(stats["snapshots"], 1, "{stats}");
    assert_eq!(stats["reclaimable_bytes"], 0, "{stats}");
    let remaining = files_under(&dir.join(&name));
    let staging: Vec<_> = remaining.keys().filter(|k| k.contains('#')).collect();
    assert!(staging.is_empty(), "staging files left: {staging:?}");
    let again = tmp.path().join("again");
    ok(cairn_args(["restore", "--repo", &url, "latest", "--target"]).arg(&again));
    assert!(files_under(&target) == files_under(&again));
    ok(&mut cairn_args(["verify", "--repo", &url, "--read-data"]));
}

#[test]
fn ssh_failures_exit_with_distinct_codes_and_say_why() {
    let Some((base, _dir)) = ssh_base() else {
        return;
    };
    let keys = std::path::PathBuf::from(std::env::var("CAIRN_TEST_SSH_KEYS").unwrap());
    let key = |name: &str| keys.join(name).to_str().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let public = generate_key(&tmp.path().join("key"));
    let url = format!("{base}/failures-{}", unique_name());
    ok(&mut cairn_args([
        "init", "--trust", &public, "--repo", &url,
    ]));
    let ssh = |identity: &str, known_hosts: &str| {
        format!(
            "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i {identity} \
             -o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes"
        )
    };

    // The same settings the services export work…
    ok(&mut with_ssh(
        &ssh(&key("client_key"), &key("known_hosts")),
        &["snapshots", "--repo", &url],
    ));
    // …a key the server does not know is refused, and so is a server
    // whose host key is not the known one.
    run(&mut with_ssh(
        &ssh(&key("stranger_key"), &key("known_hosts")),
        &["snapshots", "--repo", &url],
    ))
    .expect_code(ACCESS_DENIED)
    .stderr_has(&["Permission denied", "check the key"]);
    let empty = tmp.path().join("known_hosts");
    std::fs::write(&empty, b"").unwrap();
    run(&mut with_ssh(
        &ssh(&key("client_key"), empty.to_str().unwrap()),
        &["snapshots", "--repo", &url],
    ))
    .expect_code(ACCESS_DENIED)
    .stderr_has(&["Host key verification failed", "known_hosts"]);

    // Nobody listening: unreachable. No repository there: not found.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let closed = format!("ssh://127.0.0.1:{port}/srv/repo");
    run(&mut cairn_args(["snapshots", "--repo", &closed]))
        .expect_code(UNREACHABLE)
        .stderr_has(&["Connection refused", &closed]);
    let missing = format!("{base}/no-such-repo-{}", unique_name());
    run(&mut cairn_args(["snapshots", "--repo", &missing]))
        .expect_code(NOT_FOUND)
        .stderr_has(&["cairn init --repo"]);
    // A URL that could smuggle an ssh option is refused before ssh runs.
    run(&mut cairn_args([
        "snapshots",
        "--repo",
        "ssh://-oProxyCommand=x/srv",
    ]))
    .expect_code(2)
    .stderr_has(&["may not start with '-'"]);
    assert!(!Path::new("x").exists());
}
