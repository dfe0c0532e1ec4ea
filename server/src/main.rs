//! The `tessera` binary: parses the command line and runs it.

use clap::Parser;
use tessera_server::{Cli, init_telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = init_telemetry()?;
    cli.run().await?;
    Ok(())
}
