//! Chunking-parameter study: backs up a series of daily workload directories
//! into an in-memory repository per parameter set and reports what each day
//! stores. This is how the defaults in `ChunkerParams::DEFAULT` and friends
//! were chosen (see the README).
//!
//! usage: `sweep DAYS_DIR [avg_kib|auto:fanout:level[:frame_kib] ...]`, e.g. `sweep /data/wl auto:8:3 4:64:3`
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::path::PathBuf;
use std::sync::Arc;

use cairn_store::backend::Backend;
use cairn_store::format::config::Config;
use cairn_store::format::key::SecretKey;
use cairn_store::ops::backup::{BackupOptions, NoProgress};
use cairn_store::ops::source::Source;
use cairn_store::repo::Repository;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(
        args.next()
            .expect("usage: sweep DAYS_DIR [avg_kib:fanout:level ...]"),
    );
    let mut sets: Vec<String> = args.collect();
    if sets.is_empty() {
        sets = vec!["8:64:3".into()];
    }
    let mut days: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("day"))
        .collect();
    days.sort();
    let subdirs: Vec<String> = std::env::var("SWEEP_PARTS")
        .unwrap_or_else(|_| "couchdb".into())
        .split(',')
        .map(String::from)
        .collect();
    let key = SecretKey::from_seed(&[1; 32]);
    println!("set          day  read_MB  stored_MB  tree_MB  chunks  secs");
    for set in sets {
        let parts: Vec<&str> = set.split(':').collect();
        let mut config = Config::new(vec![]).unwrap();
        if parts[0] != "auto" {
            // A fixed average for every item.
            let avg = parts[0].parse::<u32>().unwrap() * 1024;
            config.chunking.min_avg_len = avg;
            config.chunking.max_avg_len = avg;
        }
        config.tree.avg_fanout = parts.get(1).map_or(64, |f| f.parse().unwrap());
        config.compression.level = parts.get(2).map_or(3, |l| l.parse().unwrap());
        if let Some(frame) = parts.get(3) {
            config.compression.frame_target_len = frame.parse::<u32>().unwrap() * 1024;
        }
        let backend = Backend::new(Arc::new(object_store::memory::InMemory::new()), "memory:");
        Repository::init_with_config(backend.clone(), config)
            .await
            .unwrap();
        let mut total = 0u64;
        for day in &days {
            let paths: Vec<PathBuf> = subdirs
                .iter()
                .map(|s| day.join(s))
                .filter(|p| p.exists())
                .collect();
            let session = Repository::open(backend.clone())
                .await
                .unwrap()
                .begin_write(&Default::default())
                .await
                .unwrap();
            let started = std::time::Instant::now();
            let s = session
                .backup(
                    Source::Paths(paths),
                    &key,
                    &BackupOptions::default(),
                    Arc::new(NoProgress),
                )
                .await
                .unwrap();
            session.finish().await.unwrap();
            total += s.stored_bytes;
            println!(
                "{set:<12} {:>3} {:>8.1} {:>10.2} {:>8.2} {:>7} {:>5.1}",
                day.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .trim_start_matches("day"),
                s.bytes_read as f64 / 1e6,
                s.stored_bytes as f64 / 1e6,
                s.new_tree_bytes as f64 / 1e6,
                s.chunks,
                started.elapsed().as_secs_f64()
            );
        }
        println!("{set:<12} total stored {:.1} MB", total as f64 / 1e6);
    }
}
