//! Leases: writers announce themselves, so garbage collection can wait for them.
//!
//! A lease is two objects: `locks/<id>`, written once when the writer starts
//! (its `last_modified` is the start, on the store's clock, and its body says
//! who holds it), and `locks/<id>.alive`, the heartbeat the holder rewrites
//! every `ttl / 4`. A lease is **alive** while its heartbeat (or, before the
//! first one, its start object) is younger than `ttl` by the store's clock.
//! The holder stops trusting its lease when it has not renewed it for
//! `ttl / 2` by its own clock, and then writes nothing more: a backup whose
//! lease lapsed writes no snapshot. Between `ttl / 2` and `ttl` lies the
//! margin for the two clocks' rates and for requests in flight.
//!
//! A lease's time-to-live is at most [`MAX_TTL`]; a longer one claimed in a
//! start object counts as [`MAX_TTL`], and a start object whose body does
//! not parse counts as a lease of [`DEFAULT_TTL`] (reported as damaged).
//!
//! Garbage collection holds `locks/gc`, created create-only so that only one
//! runs at a time; a dead one may be taken over.
//!
//! A writer on an append-only store (it may not overwrite or delete)
//! renews by creating `locks/<id>.alive-<n>` (n = 1, 2, …) instead of
//! rewriting `locks/<id>.alive`, and releases by letting the lease expire;
//! readers take the newest of a lease's heartbeats.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Created, ObjectDir, ObjectKey};
use crate::error::{Error, Result};

/// The default lease time-to-live.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10 * 60);
/// The longest time-to-live a lease may have: one claiming more counts as
/// this (so an `append` credential cannot stall garbage collection for ever
/// with one write), and a holder asking for more gets this.
pub const MAX_TTL: Duration = Duration::from_secs(60 * 60);
/// The longest a lease lives, however often it is renewed: garbage
/// collection stops waiting for one taken longer ago (by the store's
/// clock), so an `append` credential renewing a lease for ever cannot hold
/// it off. A holder stops writing `AGE_MARGIN` before, by its own clock.
pub const MAX_AGE: Duration = Duration::from_secs(72 * 60 * 60);
/// How long before [`MAX_AGE`] a holder stops trusting its lease.
const AGE_MARGIN: Duration = Duration::from_secs(60 * 60);
/// The name of garbage collection's exclusive lease.
pub const GC_LEASE: &str = "gc";
const ALIVE_SUFFIX: &str = ".alive";

/// Who holds a lease (the body of `locks/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// What the holder does: `backup`, `gc`, ...
    pub kind: String,
    /// Its host.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// When it started, by its own clock (informative).
    pub started: Timestamp,
    /// The lease's time-to-live in seconds.
    pub ttl_secs: u64,
    /// A unique id for this holder (a GC run id, say).
    pub holder: String,
}

#[derive(Debug)]
struct LeaseState {
    last_renewed: Instant,
    error: Option<String>,
}

/// A held lease, renewed in the background until released.
pub struct Lease {
    backend: Backend,
    id: String,
    ttl: Duration,
    record: LeaseRecord,
    state: Arc<Mutex<LeaseState>>,
    stop: Arc<tokio::sync::Notify>,
    renewer: Option<tokio::task::JoinHandle<()>>,
    /// When it was taken, by the holder's clock.
    taken: Instant,
    /// Heartbeats created (append-only stores).
    beats: Arc<AtomicU64>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({})", self.id)
    }
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| Error::invalid(format!("no randomness: {e}")))?;
    Ok(hex::encode(b))
}

impl Lease {
    /// Takes a new lease of `kind` (a writer's: many may be held at once).
    pub async fn acquire(backend: &Backend, kind: &str, ttl: Duration) -> Result<Lease> {
        let id = format!("{kind}-{}", random_hex(8)?);
        let record = Self::new_record(kind, ttl, &id);
        match backend
            .put_new(&ObjectKey::Lock(id.clone()), Bytes::from(encode(&record)))
            .await?
        {
            Created::New => Ok(Self::start(backend, id, ttl, record)),
            Created::Existed => Err(Error::invalid(format!("lease id {id} collided"))),
        }
    }

    /// Takes garbage collection's exclusive lease, taking over a dead one.
    pub async fn acquire_gc(backend: &Backend, ttl: Duration, run: &str) -> Result<Lease> {
        let key = ObjectKey::Lock(GC_LEASE.into());
        let record = Self::new_record("gc", ttl, run);
        for attempt in 0..2 {
            if backend.put_new(&key, Bytes::from(encode(&record))).await? == Created::New {
                return Ok(Self::start(backend, GC_LEASE.into(), ttl, record));
            }
            let now = store_now(backend).await?;
            let holder = list_leases(backend)
                .await?
                .into_iter()
                .find(|l| l.id == GC_LEASE);
            match holder {
                Some(h) if h.is_alive(now) || attempt == 1 => {
                    let who = h
                        .record
                        .as_ref()
                        .map(|r| {
                            format!(
                                "{} (pid {}) on {}, since {}",
                                r.holder, r.pid, r.host, h.started
                            )
                        })
                        .unwrap_or_else(|| "an unknown holder".into());
                    return Err(Error::Locked {
                        what: format!("another garbage collection is running: {who}"),
                        hint: "wait for it to finish (a dead one is taken over once its lease expires)".into(),
                    });
                }
                _ => {
                    tracing::warn!("taking over a dead garbage collection lease");
                    release_objects(backend, GC_LEASE).await?;
                }
            }
        }
        Err(Error::Locked {
            what: "could not take the garbage collection lease".into(),
            hint: "run the command again".into(),
        })
    }

    fn new_record(kind: &str, ttl: Duration, holder: &str) -> LeaseRecord {
        LeaseRecord {
            kind: kind.into(),
            host: hostname(),
            pid: std::process::id(),
            started: Timestamp::now(),
            ttl_secs: ttl.min(MAX_TTL).as_secs().max(1),
            holder: holder.into(),
        }
    }

    fn start(backend: &Backend, id: String, ttl: Duration, record: LeaseRecord) -> Lease {
        let ttl = ttl.min(MAX_TTL);
        let state = Arc::new(Mutex::new(LeaseState {
            last_renewed: Instant::now(),
            error: None,
        }));
        let stop = Arc::new(tokio::sync::Notify::new());
        let beats = Arc::new(AtomicU64::new(0));
        let renewer = tokio::spawn(renew(
            backend.clone(),
            id.clone(),
            ttl,
            Arc::clone(&state),
            Arc::clone(&stop),
            Arc::clone(&beats),
        ));
        Lease {
            backend: backend.clone(),
            id,
            ttl,
            record,
            state,
            stop,
            renewer: Some(renewer),
            taken: Instant::now(),
            beats,
        }
    }

    /// The lease's id (`locks/<id>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Who holds it.
    pub fn record(&self) -> &LeaseRecord {
        &self.record
    }

    /// Fails if the lease may have lapsed: not renewed for `ttl / 2`.
    pub fn check(&self) -> Result<()> {
        self.checker().check()
    }

    /// A handle that checks this lease from another task.
    pub fn checker(&self) -> LeaseChecker {
        LeaseChecker {
            id: self.id.clone(),
            kind: self.record.kind.clone(),
            ttl: self.ttl,
            state: Arc::clone(&self.state),
            taken: self.taken,
        }
    }
}

/// Checks a [`Lease`] from another task (an uploader writing index
/// objects as it goes), as [`Lease::check`] does.
#[derive(Debug, Clone)]
pub struct LeaseChecker {
    id: String,
    kind: String,
    ttl: Duration,
    state: Arc<Mutex<LeaseState>>,
    taken: Instant,
}

impl LeaseChecker {
    /// Fails if the lease may have lapsed.
    pub fn check(&self) -> Result<()> {
        if self.taken.elapsed() >= MAX_AGE - AGE_MARGIN {
            return Err(Error::Locked {
                what: format!(
                    "lease {} is {} hours old: a writer may hold one for less than {} hours",
                    self.id,
                    self.taken.elapsed().as_secs() / 3600,
                    MAX_AGE.as_secs() / 3600
                ),
                hint: if self.kind == "gc" {
                    "nothing more is deleted; run `cairn gc` again to go on where it stopped".into()
                } else {
                    "nothing more is written (garbage collection no longer waits for this run); \
                     split the work into shorter runs"
                        .into()
                },
            });
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let age = state.last_renewed.elapsed();
        if age >= self.ttl / 2 {
            let why = state
                .error
                .clone()
                .unwrap_or_else(|| "no renewal succeeded".into());
            return Err(Error::Locked {
                what: format!(
                    "lease {} lapsed: not renewed for {} s of its {} s ({why})",
                    self.id,
                    age.as_secs(),
                    self.ttl.as_secs()
                ),
                hint:
                    "nothing more is written (garbage collection may no longer wait for this run); \
                       check the storage and run the command again"
                        .into(),
            });
        }
        Ok(())
    }
}

impl Lease {
    /// Renews the lease now (when a long step is about to start).
    pub async fn renew_now(&self) -> Result<()> {
        heartbeat(&self.backend, &self.id, &self.beats).await?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.last_renewed = Instant::now();
        state.error = None;
        Ok(())
    }

    /// Ends the lease: stops renewing (after any renewal in flight, which
    /// could otherwise land after the delete) and deletes its objects; on an
    /// append-only store, leaves it to expire.
    pub async fn release(mut self) -> Result<()> {
        self.stop.notify_one();
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.await;
        }
        if self.backend.is_append_only() {
            return Ok(());
        }
        release_objects(&self.backend, &self.id).await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Without `release` (an error path), the lease simply expires.
        if let Some(renewer) = &self.renewer {
            renewer.abort();
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Renews lease `id`: rewrites its heartbeat, or on an append-only store
/// creates the next one (`beats` counts those made).
async fn heartbeat(backend: &Backend, id: &str, beats: &AtomicU64) -> Result<()> {
    let body = Bytes::from(encode(&serde_json::json!({ "renewed": Timestamp::now() })));
    if !backend.is_append_only() {
        let key = ObjectKey::Lock(format!("{id}{ALIVE_SUFFIX}"));
        return backend.put_overwrite(&key, body).await;
    }
    // One that exists already was made by a request that seemed to fail;
    // a store that says every name exists is not believed for ever.
    for _ in 0..MAX_TAKEN_HEARTBEATS {
        let n = beats.fetch_add(1, Ordering::Relaxed) + 1;
        let key = ObjectKey::Lock(format!("{id}{ALIVE_SUFFIX}-{n}"));
        if backend.put_new(&key, body.clone()).await? == Created::New {
            return Ok(());
        }
    }
    Err(Error::corrupt(
        format!("locks/{id}.alive-* at {}", backend.url()),
        format!(
            "{MAX_TAKEN_HEARTBEATS} heartbeat names in a row were taken already; the store \
             answers every create as existing"
        ),
    ))
}

/// Heartbeat names tried in a row before a store claiming each is taken is
/// not believed.
const MAX_TAKEN_HEARTBEATS: usize = 64;

/// The lease a lock object's name belongs to, and whether it is a
/// heartbeat (`<id>.alive`, `<id>.alive-<n>`) rather than the start object.
pub(crate) fn lease_of(name: &str) -> (&str, bool) {
    if let Some(id) = name.strip_suffix(ALIVE_SUFFIX) {
        return (id, true);
    }
    if let Some((id, n)) = name.rsplit_once(&format!("{ALIVE_SUFFIX}-"))
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
    {
        return (id, true);
    }
    (name, false)
}

async fn renew(
    backend: Backend,
    id: String,
    ttl: Duration,
    state: Arc<Mutex<LeaseState>>,
    stop: Arc<tokio::sync::Notify>,
    beats: Arc<AtomicU64>,
) {
    let period = (ttl / 4).max(Duration::from_millis(100));
    loop {
        let outcome = heartbeat(&backend, &id, &beats).await;
        {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            match outcome {
                Ok(()) => {
                    s.last_renewed = Instant::now();
                    s.error = None;
                }
                Err(e) => {
                    tracing::warn!("could not renew lease {id}: {e}");
                    s.error = Some(e.to_string());
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = stop.notified() => return,
        }
    }
}

async fn release_objects(backend: &Backend, id: &str) -> Result<()> {
    backend
        .delete(&ObjectKey::Lock(format!("{id}{ALIVE_SUFFIX}")))
        .await?;
    backend.delete(&ObjectKey::Lock(id.to_string())).await
}

/// A lease found in the repository.
#[derive(Debug, Clone)]
pub struct LeaseStatus {
    /// Its id.
    pub id: String,
    /// Who holds it (when its start object could be read).
    pub record: Option<LeaseRecord>,
    /// When it started, by the store's clock.
    pub started: Timestamp,
    /// When it was last renewed, by the store's clock.
    pub renewed: Timestamp,
    /// Why its start object's body could not be parsed, if it could not.
    pub damaged: Option<String>,
}

impl LeaseStatus {
    /// Its time-to-live as counted: as its body says, at most [`MAX_TTL`];
    /// [`DEFAULT_TTL`] when the body could not be read.
    pub fn ttl(&self) -> Duration {
        self.record
            .as_ref()
            .map_or(DEFAULT_TTL, |r| Duration::from_secs(r.ttl_secs))
            .min(MAX_TTL)
    }

    /// Whether it is alive at `now` (the store's clock): renewed within
    /// its time-to-live, and taken less than [`MAX_AGE`] ago.
    pub fn is_alive(&self, now: Timestamp) -> bool {
        let ttl = jiff::SignedDuration::try_from(self.ttl()).unwrap_or(jiff::SignedDuration::MAX);
        let max_age = jiff::SignedDuration::try_from(MAX_AGE).unwrap_or(jiff::SignedDuration::MAX);
        now.duration_since(self.renewed) < ttl && now.duration_since(self.started) < max_age
    }
}

/// Every lease in the repository.
pub async fn list_leases(backend: &Backend) -> Result<Vec<LeaseStatus>> {
    let objects = backend.list(ObjectDir::Locks).await?;
    let mut leases: std::collections::BTreeMap<String, LeaseStatus> = Default::default();
    let mut heartbeats: std::collections::HashMap<String, Timestamp> = Default::default();
    for o in objects {
        let ObjectKey::Lock(name) = &o.key else {
            continue;
        };
        match lease_of(name) {
            // Garbage collection renews by rewriting `gc.alive` only (it is
            // never append-only): counting created heartbeats for it would let
            // a create-only credential hold gc off for [`MAX_AGE`].
            (id, true) if id == GC_LEASE && !name.ends_with(ALIVE_SUFFIX) => {}
            (id, true) => {
                let newest = heartbeats.entry(id.to_string()).or_insert(o.last_modified);
                *newest = (*newest).max(o.last_modified);
            }
            (_, false) => {
                leases.insert(
                    name.clone(),
                    LeaseStatus {
                        id: name.clone(),
                        record: None,
                        started: o.last_modified,
                        renewed: o.last_modified,
                        damaged: None,
                    },
                );
            }
        }
    }
    for lease in leases.values_mut() {
        if let Some(&t) = heartbeats.get(&lease.id) {
            lease.renewed = lease.renewed.max(t);
        }
        match backend.get(&ObjectKey::Lock(lease.id.clone())).await {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(record) => lease.record = Some(record),
                Err(e) => lease.damaged = Some(e.to_string()),
            },
            Err(Error::Missing { .. }) => {} // released meanwhile
            Err(e) => return Err(e),
        }
    }
    Ok(leases.into_values().collect())
}

/// Removes the objects of every writer's lease that is no longer alive at
/// `now` (start objects and heartbeats, heartbeats first), and heartbeats
/// left without a start object for longer than [`MAX_TTL`]: what leases an
/// append-only writer leaves behind, and those of killed writers. Never
/// garbage collection's own. `leases` is [`list_leases`]'s answer, listed
/// after `now` was read (a lease renewed meanwhile then looks alive).
/// Returns how many objects went.
pub async fn remove_expired(
    backend: &Backend,
    leases: &[LeaseStatus],
    now: Timestamp,
) -> Result<u64> {
    let dead: std::collections::HashSet<&str> = leases
        .iter()
        .filter(|l| l.id != GC_LEASE && !l.is_alive(now))
        .map(|l| l.id.as_str())
        .collect();
    let started: std::collections::HashSet<&str> = leases.iter().map(|l| l.id.as_str()).collect();
    let max_ttl = jiff::SignedDuration::try_from(MAX_TTL).unwrap_or(jiff::SignedDuration::MAX);
    let mut heartbeats = Vec::new();
    let mut starts = Vec::new();
    for o in backend.list(ObjectDir::Locks).await? {
        let ObjectKey::Lock(name) = &o.key else {
            continue;
        };
        let (id, beat) = lease_of(name);
        let orphan = beat && !started.contains(id) && now.duration_since(o.last_modified) > max_ttl;
        if id != GC_LEASE && (dead.contains(id) || orphan) {
            if beat {
                heartbeats.push(o.key);
            } else {
                starts.push(o.key);
            }
        }
    }
    let removed = (heartbeats.len() + starts.len()) as u64;
    for key in heartbeats.into_iter().chain(starts) {
        backend.delete(&key).await?;
    }
    Ok(removed)
}

/// The store's clock now: write a probe and read its `last_modified`.
pub async fn store_now(backend: &Backend) -> Result<Timestamp> {
    let key = ObjectKey::Probe(format!("clock-{}", random_hex(8)?));
    backend.put_new(&key, Bytes::from_static(b"{}")).await?;
    let now = backend.head(&key).await?.last_modified;
    backend.delete(&key).await?;
    Ok(now)
}

/// This machine's host name, for snapshots (override it with `--host` where
/// the host name is not stable, e.g. in a Kubernetes pod).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(started_hours_ago: i64, renewed_secs_ago: i64, now: Timestamp) -> LeaseStatus {
        LeaseStatus {
            id: "backup-0011223344556677".into(),
            record: None,
            started: now - jiff::SignedDuration::from_hours(started_hours_ago),
            renewed: now - jiff::SignedDuration::from_secs(renewed_secs_ago),
            damaged: None,
        }
    }

    #[test]
    fn a_lease_renewed_for_ever_still_ends_at_its_maximum_age() {
        let now = Timestamp::now();
        assert!(status(1, 10, now).is_alive(now));
        assert!(status(71, 10, now).is_alive(now));
        // Renewed a moment ago, but taken more than MAX_AGE ago: an append
        // credential renewing its own lease cannot hold gc off for ever.
        assert!(!status(73, 10, now).is_alive(now));
        assert!(!status(1, 3600, now).is_alive(now));
    }
}

#[cfg(test)]
mod append_only_tests {
    use super::*;
    use crate::backend::fault::{Counters, FaultStore};

    async fn lock_names(backend: &Backend) -> Vec<String> {
        backend
            .list(ObjectDir::Locks)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key.to_string())
            .collect()
    }

    #[tokio::test]
    async fn an_append_only_lease_renews_by_new_objects_and_deletes_nothing() {
        let store = FaultStore::new(Arc::new(object_store::memory::InMemory::new()));
        store.create_only();
        let backend = Backend::new(store.clone(), "memory:").append_only();
        let lease = Lease::acquire(&backend, "replicate", Duration::from_secs(2))
            .await
            .unwrap();
        let id = lease.id().to_string();
        // Renewed every half second: the third heartbeat, however busy
        // the machine.
        let mut names = lock_names(&backend).await;
        for _ in 0..200 {
            if names.iter().any(|n| n.ends_with(&format!("{id}.alive-3"))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            names = lock_names(&backend).await;
        }
        lease.check().unwrap();
        for beat in ["alive-1", "alive-2", "alive-3"] {
            assert!(
                names.iter().any(|n| n.ends_with(&format!("{id}.{beat}"))),
                "{beat}: {names:?}"
            );
        }
        let listed = list_leases(&backend).await.unwrap();
        assert_eq!(listed.len(), 1, "heartbeats are not leases: {listed:?}");
        assert!(listed[0].renewed > listed[0].started);
        lease.release().await.unwrap();
        assert_eq!(Counters::get(&store.counters.refused), 0);
        assert_eq!(Counters::get(&store.counters.deletes), 0);
    }

    #[tokio::test]
    async fn created_heartbeats_never_prolong_garbage_collections_lease() {
        let backend = Backend::new(Arc::new(object_store::memory::InMemory::new()), "memory:");
        let put = |name: &str| {
            let backend = backend.clone();
            let key = ObjectKey::Lock(name.to_string());
            async move {
                backend
                    .put_new(&key, Bytes::from_static(b"{}"))
                    .await
                    .unwrap()
            }
        };
        put("gc").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        put("gc.alive-1").await;
        let gc = list_leases(&backend).await.unwrap();
        assert_eq!(gc.len(), 1, "{gc:?}");
        assert_eq!(gc[0].renewed, gc[0].started, "gc.alive-1 counted: {gc:?}");
    }

    #[tokio::test]
    async fn expired_leases_are_removed_live_ones_and_gcs_kept() {
        let backend = Backend::new(Arc::new(object_store::memory::InMemory::new()), "memory:");
        let append_only = backend.clone().append_only();
        let old = Lease::acquire(&append_only, "replicate", Duration::from_millis(400))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        old.release().await.unwrap(); // append-only: left to expire
        let live = Lease::acquire(&backend, "backup", DEFAULT_TTL)
            .await
            .unwrap();
        backend
            .put_new(&ObjectKey::Lock(GC_LEASE.into()), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        // Leases count in whole seconds: one second after its last heartbeat.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let now = store_now(&backend).await.unwrap();
        let leases = list_leases(&backend).await.unwrap();
        let removed = remove_expired(&backend, &leases, now).await.unwrap();
        assert!(
            removed >= 2,
            "the start object and its heartbeats: {removed}"
        );
        let names = lock_names(&backend).await;
        assert!(names.iter().all(|n| !n.contains("replicate-")), "{names:?}");
        assert!(names.iter().any(|n| n.ends_with(live.id())), "{names:?}");
        assert!(names.iter().any(|n| n == "lock gc"), "{names:?}");
        live.release().await.unwrap();
    }

    #[test]
    fn heartbeat_names_belong_to_their_lease() {
        assert_eq!(lease_of("backup-ab.alive"), ("backup-ab", true));
        assert_eq!(lease_of("backup-ab.alive-12"), ("backup-ab", true));
        assert_eq!(lease_of("backup-ab"), ("backup-ab", false));
        assert_eq!(lease_of("backup-ab.alive-"), ("backup-ab.alive-", false));
        assert_eq!(
            lease_of("backup-ab.alive-1x"),
            ("backup-ab.alive-1x", false)
        );
    }
}
