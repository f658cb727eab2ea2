//! The `sluice` command line. The binary's own modules are the command line ([`cli`]) and
//! `sluice demo`'s lab ([`demo`]); neither is part of the library's API.

// The command line's modules name library items as `crate::node`, `crate::model`, …: they
// were written as library modules, and this import keeps those paths meaning the library's.
// (The demo lab names the library as `sluice::…`: `sluice-bench` and tests include it too.)
use sluice::*;

mod cli;
// Shared with `sluice-bench` and the end-to-end tests (each includes it by path and uses a
// part of it): what one of them does not call is not dead.
#[allow(dead_code)]
mod demo;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
