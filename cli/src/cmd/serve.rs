//! `cairn serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cairn_store::backend::{Backend, BackendOptions, Location};
use cairn_store::repo::Repository;
use cairn_store::serve::{ServeLimits, ServeOptions, Tokens, remove_stale_staging, serve};
use clap::Args;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The repository to serve: a local directory.
    #[arg(long, value_name = "PATH")]
    repo: PathBuf,
    /// Address to listen on, e.g. 127.0.0.1:8700 or `[::]:8700`.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// TLS certificate chain (PEM); with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); with --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Token file: one `ROLE TOKEN` per line (roles read, append, admin;
    /// tokens of at least 24 characters), mode 600.
    #[arg(long, value_name = "FILE")]
    tokens: PathBuf,
    /// Connections served at once (lowered to fit the open-files limit);
    /// more wait until one ends.
    #[arg(long, value_name = "N", default_value_t = ServeLimits::default().max_connections)]
    max_connections: usize,
    /// Seconds a client has to send a request's headers (tests).
    #[arg(long, value_name = "SECS", hide = true)]
    header_timeout: Option<u64>,
    /// Seconds a request body may pause, or an answer wait for the client
    /// to read it (tests).
    #[arg(long, value_name = "SECS", hide = true)]
    idle_timeout: Option<u64>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let tokens = Tokens::read_file(&args.tokens)?;
    let url = args.repo.to_string_lossy().into_owned();
    // Bodies are staged and published with local hard links and renames.
    let Location::Local(dir) = Location::parse(&url)? else {
        return Err(cairn_store::Error::invalid(format!(
            "{url}: cairn serve serves a repository on local disk; run it on the machine that \
             holds the repository, or point clients at the S3 bucket or ssh:// URL itself"
        ))
        .into());
    };
    let backend = Backend::connect(&url, &BackendOptions::default(), false)?;
    // Only a repository is served.
    Repository::open(backend.clone()).await?;
    let options = ServeOptions {
        listen: args.listen,
        tls: args.tls_cert.clone().zip(args.tls_key.clone()),
        limits: limits(&args),
    };
    remove_stale_staging(&dir, options.limits.request_timeout);
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    serve(
        backend.store().clone(),
        tokens,
        &options,
        |addr| eprintln!("cairn: serving {url} at {scheme}://{addr}/"),
        shutdown_signal(),
    )
    .await?;
    eprintln!("cairn: stopped; requests in flight were finished");
    Ok(ExitCode::SUCCESS)
}

fn limits(args: &ServeArgs) -> ServeLimits {
    let mut limits = ServeLimits {
        max_connections: args.max_connections.max(1),
        ..ServeLimits::default()
    };
    if let Some(secs) = args.header_timeout {
        limits.header_timeout = Duration::from_secs(secs.max(1));
    }
    if let Some(secs) = args.idle_timeout {
        limits.idle_timeout = Duration::from_secs(secs.max(1));
    }
    limits
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
