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
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no `script` (util-linux) to give cairn a terminal");
        return;
    }
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
