//! `cairn key generate|public`.

use std::path::PathBuf;
use std::process::ExitCode;

use cairn_store::format::key::SecretKey;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Write a new ed25519 secret key (mode 0600, never overwritten); print its public key.
    Generate {
        /// Where to write the secret key.
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Print the public key of a secret key file.
    Public {
        /// The secret key file.
        file: PathBuf,
    },
}

pub fn run(command: KeyCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeyCommand::Generate { output } => {
            let key = SecretKey::generate()?;
            key.write_new_file(&output)?;
            println!("{}", key.public());
        }
        KeyCommand::Public { file } => println!("{}", SecretKey::read_file(&file)?.public()),
    }
    Ok(ExitCode::SUCCESS)
}
