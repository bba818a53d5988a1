//! The `switchboard` binary: parse the command line, set up logging, run.
//! Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use switchboard::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing(&cli);
    cli::run(cli)
}
