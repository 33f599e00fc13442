//! `cairn`: content-addressed, deduplicating, signed backups.

mod cmd;
mod config;
mod exit;
mod metrics;
mod pause;
mod progress;
mod repo_args;
mod terminal;

use clap::Parser;

/// jemalloc, configured in `.cargo/config.toml` (one arena, freed pages
/// returned after a second, huge pages where the kernel allows them):
/// glibc's malloc kept the multi-MiB pipeline buffers (freed on other
/// threads than allocated them) and added ~40 MB to peak memory.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cmd::run::die_with_parent();
    let cli = cmd::Cli::parse();
    if !cli.command.reads_in_bulk() {
        // Where the kernel has no huge pages there is nothing to turn off.
        // The setting passes to the commands a backup runs (pg_dump): they
        // stream, and lose nothing by it.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
    init_logging(cli.verbose);
    // CPU work on rayon, one thread per core; waiting on tokio.
    let _ = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("cairn-cpu-{i}"))
        .build_global();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cairn-io")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return exit::report(anyhow::Error::new(e).context("starting the runtime")),
    };
    match runtime.block_on(cmd::run(cli.command)) {
        Ok(code) => code,
        Err(e) => exit::report(e),
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,cairn_store=info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
