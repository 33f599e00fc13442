//! The smaller promises of the threat model (issue 13, "Medium"), through
//! the real binary: key files others can read are refused, special files
//! and files that change while read never give a quiet snapshot, a
//! repository whose snapshots are all refused says so with the damage exit
//! code, signer-chosen strings cannot drive the terminal, and passwords on
//! a `--command` line are not stored.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::PermissionsExt;

use support::*;

#[test]
fn a_key_file_readable_by_others_is_refused() {
    let f = Fixture::new();
    std::fs::set_permissions(&f.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    run(f.backup().args(["-", "--name", "x"]).write_stdin("data"))
        .expect_code(7)
        .stderr_has(&["readable by group or others", "chmod 600"]);
    assert!(f.snapshots(&[]).is_empty());
    std::fs::set_permissions(&f.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    ok(f.backup().args(["-", "--name", "x"]).write_stdin("data"));
}

#[test]
fn a_special_file_as_the_argument_is_refused() {
    let f = Fixture::new();
    run(f.backup().arg("/dev/null"))
        .expect_code(8)
        .stderr_has(&["/dev/null", "not a regular file"]);
    let fifo = f.path("fifo");
    ok(assert_cmd::Command::new("mkfifo").arg(&fifo));
    run(f.backup().arg(&fifo))
        .expect_code(8)
        .stderr_has(&["fifo", "not a regular file"]);
    assert!(f.snapshots(&[]).is_empty(), "no snapshot is written");
}

#[test]
fn a_file_whose_size_lies_is_never_stored_torn() {
    // procfs reports size 0 and then gives bytes: what a file changing under
    // the reader looks like every time it is read.
    let f = Fixture::new();
    run(f.backup().arg("/proc/self/status"))
        .expect_code(8)
        .stderr_has(&["status", "changed while it was read"]);
    assert!(f.snapshots(&[]).is_empty());
}

/// Flips one byte of every manifest in the repository.
fn tamper_every_manifest(f: &Fixture) -> usize {
    let dir = f.repo.join("snapshots");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        make_writable(&dir);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 0x01;
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, bytes).unwrap();
        n += 1;
    }
    n
}

#[test]
fn every_snapshot_refused_is_damage_not_an_empty_repository() {
    let f = Fixture::new();
    f.backup_bytes("a", b"one", &[]);
    f.backup_bytes("a", b"two", &[]);
    assert_eq!(tamper_every_manifest(&f), 2);
    run(&mut f.cmd("snapshots"))
        .expect_code(3)
        .stderr_has(&["2 snapshots refused"]);
    run(f.cmd("restore").args(["latest", "--stdout"]))
        .expect_code(3)
        .stderr_has(&["no usable snapshot", "2 refused"]);
}

#[test]
fn signer_chosen_strings_are_escaped_on_the_terminal() {
    let f = Fixture::new();
    ok(f.cmd("backup")
        .arg("--key")
        .arg(&f.key)
        .args(["--host", "evil\x1b]0;owned\x07", "--tag", "t\x1b[2J"])
        .args(["-", "--name", "x"])
        .write_stdin("data"));
    let out = ok(&mut f.cmd("snapshots")).stdout_str();
    assert!(!out.contains('\x1b'), "raw escape on the terminal: {out:?}");
    assert!(out.contains("evil\\u{1b}"), "{out}");
    // JSON escapes them itself, and keeps the exact value.
    assert_eq!(
        f.snapshots(&[])[0]["host"].as_str().unwrap(),
        "evil\x1b]0;owned\x07"
    );
    let plan = ok(f.cmd("forget").args(["--keep-last", "1", "--dry-run"])).stdout_str();
    assert!(!plan.contains('\x1b'), "raw escape in the plan: {plan:?}");
}

#[test]
fn passwords_on_a_command_line_are_not_stored() {
    let f = Fixture::new();
    let run = ok(f.backup().args([
        "--command",
        "true postgresql://lms:s3cret-pw@db:5432/lms --password=topsecret; PGPASSWORD=hunter2 printf ok",
        "--name",
        "dump.sql",
    ]));
    assert!(run.stderr.contains("password"), "{}", run.stderr);
    for (name, bytes) in f.contents() {
        let text = String::from_utf8_lossy(&bytes);
        for secret in ["s3cret-pw", "hunter2", "topsecret"] {
            assert!(!text.contains(secret), "{secret} stored in {name}");
        }
    }
    let command = f.snapshots(&[])[0]["source"]["command"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        command,
        "true postgresql://lms:***@db:5432/lms --password=***; PGPASSWORD=*** printf ok"
    );
    assert_eq!(f.restore_stdout("latest", None), b"ok");

    // The same as words run without a shell: each secret hidden whole,
    // whatever characters it holds.
    let run = ok(f.backup().args([
        "--name",
        "words.sql",
        "--exec",
        "--",
        "true",
        "--password",
        "PGPASSWORD=hun ter'2",
        "postgresql://lms:s3c;ret@db/lms",
    ]));
    assert!(run.stderr.contains("password"), "{}", run.stderr);
    for (name, bytes) in f.contents() {
        let text = String::from_utf8_lossy(&bytes);
        for secret in ["hun ter", "ter'2", "s3c;ret"] {
            assert!(!text.contains(secret), "{secret} stored in {name}");
        }
    }
    let command = f.snapshots(&[])[1]["source"]["command"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        command,
        "true --password 'PGPASSWORD=***' 'postgresql://lms:***@db/lms'"
    );
}
