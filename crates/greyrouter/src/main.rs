//! The `greyrouter` binary: parses the command line and runs it.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = greyrouter::cli::Cli::parse();
    greyrouter::cli::run(cli)
}
