//! Hands CPU work from async code to rayon's pool and awaits the result.
//!
//! Hashing, compression, signature checks and decoding run on rayon (one
//! thread per core); tokio's threads only wait on I/O.

/// Runs `f` on the rayon pool and waits for it without blocking tokio.
pub async fn run<T, F>(f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(result);
    });
    match rx.await {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("rayon dropped a task"),
    }
}
