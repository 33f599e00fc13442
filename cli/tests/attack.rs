//! An adversarial review of issue 13's promises with the real binary: each
//! test is an attack that once worked, kept so that it never works again.
#![allow(clippy::unwrap_used)]

mod support;

use support::*;

/// An item name holding an OSC sequence (set the window title) reached the
/// terminal raw through the progress bar of `restore` (and of `backup`,
/// from a file name), though every other output path escapes it. Progress
/// is drawn only on a terminal, so the command runs under `script`.
#[test]
fn item_names_in_progress_bars_are_escaped() {
    // `script` is util-linux's (Debian's essential bsdutils): no skipping.
    let f = Fixture::new();
    let evil = "E\x1b]0;PWNED\x07vil";
    f.backup_bytes(evil, b"abc", &[]);
    let bin = assert_cmd::cargo::cargo_bin("cairn");
    let target = f.path("restored");
    let line = format!(
        "{} restore latest --repo {} --target {}",
        bin.display(),
        f.repo.display(),
        target.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env_remove("CAIRN_REPO")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("restored snapshot"), "{shown}");
    assert!(
        !shown.contains("\x1b]0;PWNED"),
        "the escape sequence reached the terminal: {shown:?}"
    );
    assert_eq!(std::fs::read(target.join(evil)).unwrap(), b"abc");
}

/// A lease body is written by whoever holds an `append` token; `gc` showed
/// its host raw in "waiting: ... still running: backup on HOST".
#[test]
fn gc_escapes_what_a_lease_body_says() {
    let f = Fixture::new();
    f.backup_bytes("a", &[1; 300_000], &[]);
    f.backup_bytes("a", &[2; 300_000], &[]);
    ok(f.cmd("forget").args(["--keep-last", "1"]));
    std::fs::write(
        f.repo.join("locks/backup-evil"),
        br#"{"kind":"backup","host":"\u001b]0;PWNED\u0007","pid":1,"started":"2026-12-05T00:00:00Z","ttl_secs":3600,"holder":"x"}"#,
    )
    .unwrap();
    for _ in 0..2 {
        let out = run(f.cmd("gc").args(["--grace", "0s"]));
        let said = format!("{}{}", out.stdout_str(), out.stderr);
        assert!(said.contains("waiting"), "{said}");
        assert!(
            !said.contains('\x1b'),
            "raw escape on the terminal: {said:?}"
        );
    }
}

/// A signed manifest (a compromised signer) whose body does not parse:
/// the parser's message quotes the offending field name, and `replicate`,
/// `snapshots` and `verify` printed it raw.
#[test]
fn refusal_reasons_quoting_a_signed_body_are_escaped() {
    let f = Fixture::new();
    let summary = f.backup_bytes("a", b"abc", &[]);
    let genuine = summary["snapshot"].as_str().unwrap().to_string();
    let bytes = std::fs::read(f.repo.join("snapshots").join(&genuine)).unwrap();
    let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let mut body: serde_json::Value = serde_json::from_slice(&bytes[12..12 + len]).unwrap();
    body["\x1b]0;PWNED\x07"] = serde_json::json!(1);
    let body = serde_json::to_vec(&body).unwrap();
    let key = cairn_store::format::key::SecretKey::read_file(&f.key).unwrap();
    let mut message = cairn_store::format::manifest::SIGNATURE_DOMAIN.to_vec();
    let repository: serde_json::Value = serde_json::from_slice(&bytes[12..12 + len]).unwrap();
    let repository: cairn_store::id::RepoId =
        serde_json::from_value(repository["repository"].clone()).unwrap();
    message.extend_from_slice(repository.as_bytes());
    message.extend_from_slice(&body);
    let mut out = cairn_store::format::manifest::MANIFEST_MAGIC.to_vec();
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(key.public().as_bytes());
    out.extend_from_slice(&key.sign(&message));
    let id = cairn_store::id::SnapshotId::of(&out).to_hex();
    std::fs::write(f.repo.join("snapshots").join(&id), out).unwrap();

    let replica = f.path("replica");
    let mut commands = vec![
        f.cmd("snapshots"),
        f.cmd("verify"),
        f.cmd("stats"),
        f.cmd("forget"),
    ];
    commands[3].args(["--keep-last", "1", "--dry-run"]);
    let mut pull = cairn_args(["replicate", "--from"]);
    pull.arg(&f.repo)
        .arg("--to")
        .arg(&replica)
        .args(["--trust", &f.public]);
    commands.push(pull);
    for (n, mut c) in commands.into_iter().enumerate() {
        let out = run(&mut c);
        let said = format!("{}{}", out.stdout_str(), out.stderr);
        // stats and forget do not list refused snapshots.
        if ![2, 3].contains(&n) {
            assert!(said.contains("PWNED"), "{c:?} does not report it: {said}");
        }
        assert!(!said.contains('\x1b'), "{c:?}: raw escape: {said:?}");
    }
}
