//! The `tessera` binary: parses the command line and runs it.

use std::{error::Error, process::ExitCode};

use clap::Parser;
use tessera_server::{Cli, init_telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match init_telemetry() {
        Ok(_telemetry) => cli.run().await.map_err(Box::<dyn Error>::from),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line an operator can act on: no backtrace (whatever
            // RUST_BACKTRACE says), and no cause repeated.
            eprintln!("error: {}", describe(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// The error and each cause it does not already say, joined by ": ".
fn describe(error: &dyn Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        cause = e.source();
    }
    message
}
