//! The test suite's CouchDB 3 emulation (`tests/support/couch3.rs`) in
//! front of a pouchdb-server, as a process of its own, for benchmarks that
//! want CouchDB 3's behaviour on loopback (`benches/couch/many-dbs.sh
//! --couchdb3`).
//!
//! Usage: `couch3_proxy UPSTREAM_HOST:PORT [--single-node]`; prints the
//! port it listens on, then serves until killed.
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/couch3.rs"]
mod couch3;
#[path = "../tests/support/faulty.rs"]
mod faulty;

fn main() {
    let mut args = std::env::args().skip(1);
    let upstream = args
        .next()
        .expect("usage: couch3_proxy HOST:PORT [--single-node]");
    let proxy = faulty::Proxy::couchdb3(upstream);
    if args.any(|a| a == "--single-node") {
        let emulation = proxy.couch3.as_ref().unwrap();
        emulation
            .single_node
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
    println!("{}", proxy.port);
    loop {
        std::thread::park();
    }
}
