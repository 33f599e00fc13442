//! `--repo` and how to reach it, shared by every command that opens a repository.

use std::time::Duration;

use cairn_store::backend::{Backend, BackendOptions};
use cairn_store::format::key::PublicKey;
use cairn_store::repo::Repository;
use clap::Args;

/// Where the repository is.
#[derive(Debug, Args)]
pub struct RepoArgs {
    /// Repository: a path, file://PATH or s3://BUCKET/PREFIX.
    // Optional in type only: clap requires it, except where a subcommand
    // (`backup couchdb`) takes its own.
    #[arg(long, env = "CAIRN_REPO", value_name = "URL", required = true)]
    pub repo: Option<String>,
    /// S3 endpoint for S3-compatible stores (else AWS_ENDPOINT_URL, else AWS).
    #[arg(long, env = "CAIRN_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region (else AWS_REGION, else us-east-1).
    #[arg(long, env = "CAIRN_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Give up on an unanswered storage request after this many seconds (retries included).
    #[arg(
        long,
        env = "CAIRN_TIMEOUT",
        default_value_t = 60,
        value_name = "SECONDS"
    )]
    pub timeout: u64,
}

impl RepoArgs {
    /// Connects to the storage (creating a local directory only when `create`).
    pub fn backend(&self, create: bool) -> cairn_store::Result<Backend> {
        let options = BackendOptions {
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            retry_timeout: Duration::from_secs(self.timeout),
            ..BackendOptions::default()
        };
        Backend::connect(self.url()?, &options, create)
    }

    /// The repository's URL.
    pub fn url(&self) -> cairn_store::Result<&str> {
        self.repo
            .as_deref()
            .ok_or_else(|| cairn_store::Error::invalid("--repo is required"))
    }

    /// Opens the repository.
    pub async fn open(&self) -> cairn_store::Result<Repository> {
        Repository::open(self.backend(false)?).await
    }
}

/// Keys to trust instead of the repository's own list.
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// Accept only snapshots signed by this public key (repeatable); overrides the repository's list.
    #[arg(
        long = "trust",
        value_name = "PUBKEY",
        env = "CAIRN_TRUST",
        value_delimiter = ','
    )]
    pub keys: Vec<PublicKey>,
}
