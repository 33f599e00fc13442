//! `CAIRN_PAUSE_AT=POINT`: hold the command at a named pause point, for
//! tests that kill it there (`kill -9`) to prove what an interruption at
//! that point leaves. Not for everyday use.

use std::sync::Arc;

use cairn_store::pause::Pauses;

/// Pauses from the environment: at `CAIRN_PAUSE_AT`, say so on stderr and wait forever.
pub fn from_env() -> Pauses {
    let Ok(point) = std::env::var("CAIRN_PAUSE_AT") else {
        return Pauses::default();
    };
    Pauses::new(Arc::new(move |name: &'static str| {
        let hold = name == point;
        Box::pin(async move {
            if hold {
                eprintln!("cairn: paused at {name}");
                std::future::pending::<()>().await;
            }
        })
    }))
}

/// `CAIRN_LEASE_TTL=SECONDS`: a shorter lease, so that tests which kill a
/// writer need not wait ten minutes for its lease to expire.
pub fn lease_ttl() -> std::time::Duration {
    std::env::var("CAIRN_LEASE_TTL")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(
            cairn_store::lease::DEFAULT_TTL,
            std::time::Duration::from_secs,
        )
}
