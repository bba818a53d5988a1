//! The `switchboard` binary: parse the command line, set up logging, run.
//! Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use switchboard::cli::{self, Cli};
use switchboard::server::exec::keeper;

fn main() -> ExitCode {
    // The keeper the server starts from its own binary: not a user-facing
    // command, so it stays out of clap (help, completions, man page).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(keeper::SUBCOMMAND) {
        return keeper::main(args.get(2..).unwrap_or_default());
    }
    let cli = Cli::parse();
    cli::init_tracing(&cli);
    cli::run(cli)
}
