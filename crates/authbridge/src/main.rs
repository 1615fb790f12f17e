//! The `authbridge` binary: command line and wiring only. The proxy machinery lives in
//! `proxy-core`, identity in `spiffe-source`, outbound policy in `outbound-exchange`.
#![forbid(unsafe_code)]

mod cli;
mod config;
mod dev;
mod dev_issuer;
mod logging;
mod run;

use std::process::ExitCode;

fn main() -> ExitCode {
    let code = cli::main();
    logging::flush();
    code
}
