//! A write session: the only way to add data to a repository.
//!
//! [`Repository::begin_write`] does what every writer must, in this order:
//! check that the store honours create-only writes, take a lease (so garbage
//! collection waits for this writer), read garbage collection's condemned
//! lists, and load the index *without* the condemned packs, so nothing
//! written here relies on a pack that may be deleted. The session's lease is
//! renewed in the background and checked before the index objects and the
//! snapshot are written; [`WriteSession::finish`] releases it.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use crate::error::Result;
use crate::format::config::Config;
use crate::id::{IdSet, PackId};
use crate::lease::{DEFAULT_TTL, Lease};
use crate::pause::Pauses;
use crate::repo::{IndexedRepository, Repository};

/// How to open a write session.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// What the writer is (`backup`, ...), recorded in its lease.
    pub kind: &'static str,
    /// The lease's time-to-live.
    pub lease_ttl: Duration,
    /// Pause points (tests).
    pub pauses: Pauses,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            kind: "backup",
            lease_ttl: DEFAULT_TTL,
            pauses: Pauses::default(),
        }
    }
}

/// A repository opened for writing, under a lease.
#[derive(Debug)]
pub struct WriteSession {
    repo: IndexedRepository,
    lease: Lease,
    condemned: Arc<IdSet<PackId>>,
    pauses: Pauses,
}

impl Repository {
    /// Opens the repository for writing (see the module docs for the order).
    pub async fn begin_write(self, options: &WriteOptions) -> Result<WriteSession> {
        self.config().check_writer_params()?;
        self.backend().probe_conditional_create().await?;
        let lease = Lease::acquire(self.backend(), options.kind, options.lease_ttl).await?;
        let condemned = crate::ops::gc::load_condemned(self.backend()).await?;
        let repo = self.load_index_excluding(&condemned).await?;
        options.pauses.at("write:index-loaded").await;
        Ok(WriteSession {
            repo,
            lease,
            condemned: Arc::new(condemned),
            pauses: options.pauses.clone(),
        })
    }
}

impl WriteSession {
    /// The repository, its index without condemned packs.
    pub fn repo(&self) -> &IndexedRepository {
        &self.repo
    }

    /// The storage.
    pub fn backend(&self) -> &Backend {
        self.repo.backend()
    }

    /// The config.
    pub fn config(&self) -> &Config {
        self.repo.config()
    }

    /// The lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Packs garbage collection condemned when the session began.
    pub fn condemned(&self) -> &Arc<IdSet<PackId>> {
        &self.condemned
    }

    /// The pause points.
    pub fn pauses(&self) -> &Pauses {
        &self.pauses
    }

    /// Ends the session, releasing the lease.
    pub async fn finish(self) -> Result<()> {
        self.lease.release().await
    }
}
