//! `poolctl`: parse the command line, run it, report errors and exit.

use std::process::ExitCode;

use clap::Parser;
use poolctl::args::Cli;
use poolctl::run::{run, CliError};

fn main() -> ExitCode {
    // clap prints usage errors and exits 2 itself (0 for --help and --version).
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    let result = runtime
        .block_on(run(cli, &mut stdout))
        .and_then(|()| std::io::Write::flush(&mut stdout).map_err(CliError::from));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = e.render();
            if !msg.is_empty() {
                eprintln!("{msg}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
