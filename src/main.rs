//! The `sluice` command line.

use std::process::ExitCode;

fn main() -> ExitCode {
    sluice::cli::main()
}
