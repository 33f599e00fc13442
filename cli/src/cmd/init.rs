//! `cairn init`.

use std::process::ExitCode;

use cairn_store::format::key::PublicKey;
use cairn_store::repo::Repository;
use clap::Args;

use crate::repo_args::RepoArgs;

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Accept only snapshots signed by this public key (repeatable). Without
    /// it, any valid signature is accepted.
    #[arg(long = "trust", value_name = "PUBKEY", value_delimiter = ',')]
    trust: Vec<PublicKey>,
    /// zstd level for new data: 3 (the default) stores ~6 % less than 1 on
    /// database dumps; 1 compresses about 1.6x faster.
    #[arg(long, value_name = "LEVEL", default_value_t = 3)]
    compression_level: i32,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let mut config = cairn_store::format::config::Config::new(args.trust)?;
    config.compression.level = args.compression_level;
    let repo = Repository::init_with_config(args.repo.backend(true)?, config).await?;
    let config = repo.config();
    if args.json {
        super::print_json(&serde_json::json!({
            "repository": config.id,
            "url": args.repo.url()?,
            "trusted_keys": config.trusted_keys,
            "chunking": config.chunking,
            "compression": config.compression,
        }))?;
    } else {
        println!(
            "created repository {} at {}",
            config.id.short(),
            args.repo.url()?
        );
        match config.trusted_keys.as_slice() {
            [] => println!(
                "no trusted keys: any valid signature is accepted (pass --trust to pin keys)"
            ),
            keys => {
                for k in keys {
                    println!("trusted key: {k}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
