//! Named points where an operation can be held: the seam through which
//! tests force the interleavings garbage collection must survive (and, in
//! the binary, `CAIRN_PAUSE_AT` for tests that kill it there).

use std::sync::Arc;

use futures::future::BoxFuture;

/// Called at each pause point with its name; returns when the operation may go on.
pub type PauseFn = Arc<dyn Fn(&'static str) -> BoxFuture<'static, ()> + Send + Sync>;

/// Pause points; by default none hold anything.
#[derive(Clone, Default)]
pub struct Pauses(Option<PauseFn>);

impl std::fmt::Debug for Pauses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Pauses(set)"
        } else {
            "Pauses(none)"
        })
    }
}

impl Pauses {
    /// Pauses that call `f` at every point.
    pub fn new(f: PauseFn) -> Self {
        Pauses(Some(f))
    }

    /// Reaches the point `name`: waits as long as `f` says.
    pub async fn at(&self, name: &'static str) {
        if let Some(f) = &self.0 {
            f(name).await;
        }
    }
}
