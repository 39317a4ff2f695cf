//! The `xknock` command line: every command is a function in `xknock::cli`.

use clap::Parser as _;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = xknock::cli::Cli::parse().command.run() {
        eprintln!("xknock: {e:#}");
        std::process::exit(1);
    }
}
