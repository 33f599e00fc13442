//! Progress bars on a terminal, nothing otherwise (cron mail stays clean).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A byte-count progress bar, or nothing when stderr is not a terminal.
#[derive(Debug, Clone)]
pub struct Bar(Option<ProgressBar>);

impl Bar {
    /// A bar for `total` bytes (a spinner when unknown), if stderr is a terminal.
    pub fn bytes(total: Option<u64>, quiet: bool) -> Bar {
        if quiet || !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template(
                    "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {msg:30!} {bytes} {binary_bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.enable_steady_tick(Duration::from_millis(200));
        Bar(Some(bar))
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

impl cairn_store::ops::backup::Progress for Bar {
    fn item(&self, name: &str, _len: Option<u64>) {
        if let Some(b) = &self.0 {
            b.set_message(crate::terminal::safe(name).into_owned());
        }
    }
    fn read(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }
}

impl cairn_store::ops::restore::RestoreProgress for Bar {
    fn item(&self, name: &str, _len: u64) {
        if let Some(b) = &self.0 {
            b.set_message(crate::terminal::safe(name).into_owned());
        }
    }
    fn written(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }
}

/// Bytes for humans: 1.5 KiB, 12.3 MiB.
pub fn human_bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

/// A throughput for humans: 123.4 MiB/s.
pub fn rate(bytes: u64, seconds: f64) -> String {
    format!(
        "{:.1} MiB/s",
        bytes as f64 / 1_048_576.0 / seconds.max(1e-9)
    )
}
