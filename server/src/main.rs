//! The `tessera` binary: parses the command line and runs it.

use clap::Parser;
use tessera_server::{cli::Cli, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = telemetry::init()?;
    cli.run().await?;
    Ok(())
}
