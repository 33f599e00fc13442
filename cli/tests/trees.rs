//! Format v2 end to end, as root: every entry kind and metadata field a
//! volume needs survives backup and restore; unchanged files are not read,
//! changed ones are, whatever the change keeps; `cairn ls` lists the tree.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use support::*;

fn sh(script: &str) {
    let status = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(status.success(), "{script}");
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let out = Command::new("getfattr")
        .args(["--only-values", "-h", "-n", name])
        .arg(path)
        .output()
        .unwrap();
    out.status.success().then_some(out.stdout)
}

/// A small volume: owners, modes, times, an xattr, hard links, a sparse
/// file, a FIFO, a device, a symlink, a setgid directory.
fn make_volume(root: &Path) {
    assert!(
        running_as_root(),
        "this test runs as root (the test suite does)"
    );
    std::fs::create_dir_all(root.join("uploads/course")).unwrap();
    std::fs::write(root.join("uploads/course/a.html"), b"<p>a</p>\n").unwrap();
    std::fs::write(root.join("uploads/b.json"), b"{\"b\":1}\n").unwrap();
    sh(&format!(
        "cd {} && chown -R 999:999 uploads && chmod 0640 uploads/b.json && chmod 2775 uploads \
         && setfattr -n user.cairn -v kept uploads/b.json \
         && ln uploads/b.json hard-link && mkdir other && ln uploads/b.json other/third \
         && truncate -s 64M sparse && dd if=/dev/urandom of=sparse bs=1M count=1 seek=20 conv=notrunc status=none \
         && mkfifo pipe && mknod null c 1 3 && ln -s uploads/course link \
         && touch -h -d '2021-03-04 05:06:07.123456789' link uploads/course/a.html",
        root.display()
    ));
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

#[test]
fn every_kind_and_metadata_field_round_trips() {
    let f = Fixture::new();
    let vol = f.path("vol");
    make_volume(&vol);
    ok(f.backup().arg(&vol));
    let target = f.path("restored");
    ok(f.cmd("restore").args(["latest", "--target"]).arg(&target));
    let got = target.join("vol");
    for name in [
        "uploads",
        "uploads/course",
        "uploads/course/a.html",
        "uploads/b.json",
        "hard-link",
        "other/third",
        "sparse",
        "pipe",
        "null",
        "link",
    ] {
        let (a, b) = (
            std::fs::symlink_metadata(vol.join(name)).unwrap(),
            std::fs::symlink_metadata(got.join(name)).unwrap(),
        );
        assert_eq!(
            (a.uid(), a.gid(), a.mode(), a.rdev(), a.len()),
            (b.uid(), b.gid(), b.mode(), b.rdev(), b.len()),
            "{name}"
        );
        if !a.is_dir() {
            assert_eq!(
                (a.mtime(), a.mtime_nsec()),
                (b.mtime(), b.mtime_nsec()),
                "{name}"
            );
        }
        if a.is_file() {
            assert_eq!(
                std::fs::read(vol.join(name)).unwrap(),
                std::fs::read(got.join(name)).unwrap()
            );
        }
    }
    // Directory times are set after what they hold.
    let (a, b) = (
        std::fs::metadata(vol.join("uploads/course")).unwrap(),
        std::fs::metadata(got.join("uploads/course")).unwrap(),
    );
    assert_eq!((a.mtime(), a.mtime_nsec()), (b.mtime(), b.mtime_nsec()));
    assert_eq!(
        std::fs::metadata(got.join("uploads"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o2775
    );
    assert_eq!(
        xattr(&got.join("uploads/b.json"), "user.cairn").unwrap(),
        b"kept"
    );
    // Three names, one file.
    let inode = |p: &str| std::fs::metadata(got.join(p)).unwrap().ino();
    assert_eq!(inode("uploads/b.json"), inode("hard-link"));
    assert_eq!(inode("uploads/b.json"), inode("other/third"));
    assert_eq!(std::fs::metadata(got.join("hard-link")).unwrap().nlink(), 3);
    // Holes stay holes: 1 MiB of data in 64 MiB.
    let blocks = std::fs::metadata(got.join("sparse")).unwrap().blocks() * 512;
    assert!(blocks < 4 << 20, "{blocks} bytes allocated");
    assert_eq!(
        std::fs::read_link(got.join("link")).unwrap(),
        Path::new("uploads/course")
    );

    // `ls` names every entry with its owner.
    let listing = ok(f.cmd("ls").args(["latest", "vol", "-r"])).stdout_str();
    assert!(
        listing.contains("999/999") || listing.contains("uploads"),
        "{listing}"
    );
    for name in [
        "vol/uploads/b.json",
        "vol/pipe",
        "vol/null",
        "vol/link -> uploads/course",
    ] {
        assert!(listing.contains(name), "{name}: {listing}");
    }
    let top = ok(f.cmd("ls").arg("latest")).stdout_str();
    assert_eq!(top.lines().count(), 1, "{top}");
}

#[test]
fn unchanged_files_are_not_read_and_every_change_is() {
    let f = Fixture::new();
    let vol = f.path("vol");
    std::fs::create_dir_all(&vol).unwrap();
    for i in 0..20 {
        std::fs::write(vol.join(format!("f{i:02}")), random_bytes(10_000, i)).unwrap();
    }
    // A file changed within a second of its parent's backup is read again.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let first = ok(f.backup().arg(&vol).arg("--json")).json();
    assert_eq!(first["files_unchanged"], 0);

    let second = ok(f.backup().arg(&vol).arg("--json")).json();
    assert_eq!(second["files_unchanged"], 20, "{second:#}");
    assert_eq!(second["bytes_read"], 0, "{second:#}");
    assert_eq!(
        second["new_blobs"], 0,
        "an unchanged tree stores nothing: {second:#}"
    );

    // Same size, same mtime, new bytes: only the change time tells.
    let same_size = vol.join("f03");
    let mtime = std::fs::metadata(&same_size).unwrap().modified().unwrap();
    std::fs::write(&same_size, random_bytes(10_000, 99)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&same_size)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    // Longer, with the old mtime put back.
    let longer = vol.join("f07");
    let mtime = std::fs::metadata(&longer).unwrap().modified().unwrap();
    std::fs::write(&longer, random_bytes(12_000, 98)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&longer)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let third = ok(f.backup().arg(&vol).arg("--json")).json();
    assert_eq!(third["files_unchanged"], 18, "{third:#}");
    assert_eq!(third["bytes_read"], 22_000, "{third:#}");
    assert_eq!(
        f.restore_stdout("latest", Some("vol/f03")),
        random_bytes(10_000, 99)
    );
    assert_eq!(
        f.restore_stdout("latest", Some("vol/f07")),
        random_bytes(12_000, 98)
    );

    // --force-reread reads everything.
    let forced = ok(f.backup().arg(&vol).args(["--json", "--force-reread"])).json();
    assert_eq!(forced["files_unchanged"], 0);
    assert_eq!(forced["bytes_read"], 20 * 10_000 + 2_000);
}

#[test]
fn restoring_over_an_existing_directory_needs_overwrite_and_delete_prunes() {
    let f = Fixture::new();
    let vol = f.path("vol");
    std::fs::create_dir_all(vol.join("d")).unwrap();
    std::fs::write(vol.join("keep"), b"keep").unwrap();
    std::fs::write(vol.join("d/changed"), b"snapshot").unwrap();
    ok(f.backup().arg(&vol));
    let target = f.path("t");
    ok(f.cmd("restore").args(["latest", "--target"]).arg(&target));
    std::fs::write(target.join("vol/d/changed"), b"edited after").unwrap();
    std::fs::write(target.join("vol/extra"), b"not in the snapshot").unwrap();

    run(f.cmd("restore").args(["latest", "--target"]).arg(&target)).expect_code(11);
    ok(f.cmd("restore")
        .args(["latest", "--overwrite", "--target"])
        .arg(&target));
    assert_eq!(
        std::fs::read(target.join("vol/d/changed")).unwrap(),
        b"snapshot"
    );
    assert!(
        target.join("vol/extra").exists(),
        "--overwrite alone keeps other files"
    );
    ok(f.cmd("restore")
        .args(["latest", "--overwrite", "--delete", "--target"])
        .arg(&target));
    assert!(!target.join("vol/extra").exists());
    assert_eq!(std::fs::read(target.join("vol/keep")).unwrap(), b"keep");
}

#[test]
fn diff_names_what_changed_and_skips_equal_subtrees() {
    let f = Fixture::new();
    let vol = f.path("vol");
    for d in ["same/deep", "changing"] {
        std::fs::create_dir_all(vol.join(d)).unwrap();
    }
    std::fs::write(vol.join("same/deep/x"), b"x").unwrap();
    std::fs::write(vol.join("changing/edit"), b"before").unwrap();
    std::fs::write(vol.join("changing/chmod"), b"c").unwrap();
    std::fs::write(vol.join("changing/gone"), b"g").unwrap();
    std::fs::write(vol.join("changing/kind"), b"k").unwrap();
    let a = str_field(&ok(f.backup().arg(&vol).arg("--json")).json(), "snapshot").to_string();
    std::fs::write(vol.join("changing/edit"), b"after!").unwrap();
    std::fs::set_permissions(
        vol.join("changing/chmod"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::remove_file(vol.join("changing/gone")).unwrap();
    std::fs::remove_file(vol.join("changing/kind")).unwrap();
    std::fs::create_dir(vol.join("changing/kind")).unwrap();
    std::fs::write(vol.join("changing/kind/new"), b"n").unwrap();
    let b = str_field(&ok(f.backup().arg(&vol).arg("--json")).json(), "snapshot").to_string();

    let out = ok(f.cmd("diff").args([&a, &b]));
    let lines: Vec<&str> = out.stdout_str().leak().lines().collect();
    assert_eq!(
        lines,
        [
            "U vol/changing",
            "U vol/changing/chmod",
            "M vol/changing/edit",
            "- vol/changing/gone",
            "T vol/changing/kind",
            "+ vol/changing/kind/new",
        ],
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("(1 unchanged directories not read)"),
        "{}",
        out.stderr
    );
    let json = ok(f.cmd("diff").args([&a, &b, "--json"])).stdout_str();
    let summary: serde_json::Value = serde_json::from_str(json.lines().last().unwrap()).unwrap();
    assert_eq!(summary["modified"], 1);
    assert_eq!(summary["added"], 1);
    assert_eq!(summary["removed"], 1);
    // A snapshot against itself: nothing, and nothing read.
    let same = ok(f.cmd("diff").args([&a, &a]));
    assert_eq!(same.stdout_str(), "");
}

#[test]
fn a_backup_given_its_time_is_compared_by_when_it_ran() {
    let f = Fixture::new();
    let vol = f.path("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("old"), b"settled long ago").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let backup = |time: Option<&str>| {
        let mut c = f.backup();
        c.arg("--json");
        if let Some(t) = time {
            c.args(["--time", t]);
        }
        ok(c.arg(&vol)).json()
    };
    // An import dated in the past: its files settled before it ran, so the
    // next backup takes them unread (the date alone would make every file
    // look changed after it).
    backup(Some("2020-01-01T00:00:00Z"));
    let next = backup(None);
    assert_eq!(next["files_unchanged"], 1, "{next:#}");
    // Dated in the future: a file written just before it ran may change
    // again within the same tick, so the next backup reads it again (the
    // date alone would call it settled).
    std::fs::write(vol.join("new"), b"written right now").unwrap();
    backup(Some("2030-01-01T00:00:00Z"));
    let after = backup(None);
    assert_eq!(after["files_unchanged"], 1, "only the old file: {after:#}");
}

#[test]
fn only_settled_files_of_the_backups_own_signer_are_taken_unread() {
    // Two keys the repository trusts: node1's and a node4 that may be compromised.
    let tmp = tempfile::tempdir().unwrap();
    let (k1, k4) = (tmp.path().join("k1"), tmp.path().join("k4"));
    let (p1, p4) = (generate_key(&k1), generate_key(&k4));
    let repo = tmp.path().join("repo");
    ok(cairn_args(["init", "--trust", &p1, "--trust", &p4])
        .arg("--repo")
        .arg(&repo));
    let vol = tmp.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("authorized_keys"), b"ssh-ed25519 AAAA admin\n").unwrap();
    let backup = |key: &Path| {
        let mut c = cairn();
        c.arg("backup")
            .arg("--repo")
            .arg(&repo)
            .arg("--key")
            .arg(key);
        c.args(["--host", "node1", "--json"]).arg(&vol);
        ok(&mut c).json()
    };
    // Written just now: a second backup right away reads it again (it may
    // have changed within the same clock tick after the first read it).
    backup(&k1);
    let racy = backup(&k1);
    assert_eq!(racy["files_unchanged"], 0, "{racy:#}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let later = backup(&k1);
    assert_eq!(
        later["files_unchanged"], 0,
        "its parent began too soon after the change"
    );
    let settled = backup(&k1);
    assert_eq!(settled["files_unchanged"], 1, "{settled:#}");
    // node4's snapshot of the same host and paths is newer, but never the
    // parent of node1's backup: its entries are not signed again unread.
    let forged = backup(&k4);
    let next = backup(&k1);
    assert_eq!(next["parent"], settled["snapshot"], "{next:#}");
    assert_eq!(next["files_unchanged"], 1, "{next:#}");
    let mut c = cairn();
    c.arg("backup")
        .arg("--repo")
        .arg(&repo)
        .arg("--key")
        .arg(&k1);
    c.args(["--parent", forged["snapshot"].as_str().unwrap()])
        .arg(&vol);
    run(&mut c)
        .expect_code(2)
        .stderr_has(&["not by this backup's key"]);
}
