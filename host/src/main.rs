//! The `switchyard` binary: parse arguments, then run, check or test.

use std::process::ExitCode;

use clap::Parser;
use switchyard::cli::{self, Cli, Command, PolicyCommand};

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Check { config } => match runtime.block_on(cli::check(&config)) {
            Ok(()) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for p in problems {
                    eprintln!("{p}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Policy(PolicyCommand::Test(t)) => match runtime.block_on(cli::policy_test(&t)) {
            Ok(decision) => {
                println!("{decision}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchyard: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, .. } => {
            eprintln!(
                "switchyard: `run` is not available yet; use `switchyard check --config {}`",
                config.display()
            );
            ExitCode::FAILURE
        }
    }
}
