//! The `greyrouter-load` binary: parses the command line and runs it.

use clap::Parser;

fn main() -> std::process::ExitCode {
    greyrouter_load::cli::execute(greyrouter_load::cli::Cli::parse())
}
