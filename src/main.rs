//! The `switchboard` binary: parse the command line, set up logging, run.
//! Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use switchboard::cli::{self, Cli};
use switchboard::server::exec::keeper;

fn main() -> ExitCode {
    // The keeper the server starts from its own binary: not a user-facing
    // command, so it stays out of clap (help, completions, man page).
    // args_os: any other command line may hold arguments that are not
    // UTF-8 (`env::args` would panic on them).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == keeper::SUBCOMMAND)
    {
        let rest: Vec<String> = std::env::args_os()
            .skip(2)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return keeper::main(&rest);
    }
    let cli = Cli::parse();
    cli::init_tracing(&cli);
    let code = cli::run(cli);
    // The last lines (why the server stopped, a client's warnings) are
    // still in the log's queue.
    switchboard::logsink::flush(std::time::Duration::from_secs(2));
    code
}
