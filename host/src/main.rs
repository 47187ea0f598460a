//! The `switchyard` binary: parse arguments, then run, check or test.

use std::process::ExitCode;

use clap::Parser;
use switchyard::cli::{self, Cli, Command, LogFormat, PolicyCommand};
use switchyard::config::Config;
use switchyard::daemon;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sets up logging; the guard flushes the queued lines when dropped.
fn init_tracing(
    format: LogFormat,
    level: Option<&str>,
) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::new(l),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    // Serving threads queue their lines (up to 128k of them; past that
    // they are dropped, never waited for); one thread writes them.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("switchyard-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    guard
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log = init_tracing(cli.log_format, cli.log_level.as_deref());
    // `run` sizes the runtime from its configuration.
    let mut workers = None;
    let mut run_config = None;
    if let Command::Run { config, .. } = &cli.command {
        match Config::load(config) {
            Ok(c) => {
                workers = c.runtime.worker_threads;
                run_config = Some(c);
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // The control runtime: admin, reloads, file watches, health checks
    // and the CLI's commands. Traffic is served on the workers.
    let runtime = match tokio::runtime::Builder::new_current_thread()
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
        Command::Policy(p) => policy(&runtime, p),
        Command::Run {
            strict_policies, ..
        } => {
            let config = run_config.expect("loaded above");
            let workers = workers.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            let workers = match switchyard::workers::Workers::start(workers) {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("switchyard: cannot start the workers: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let options = daemon::Options {
                strict_policies,
                watch: true,
                workers: Some(workers.clone()),
            };
            let ran = runtime.block_on(daemon::run(config, options));
            workers.stop(std::time::Duration::from_secs(2));
            match ran {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `switchyard policy test` and `policy replay`.
fn policy(runtime: &tokio::runtime::Runtime, command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Test(t) => match runtime.block_on(cli::policy_test(&t)) {
            Ok(cli::Tested::Decision(decision)) => {
                println!("{decision}");
                ExitCode::SUCCESS
            }
            Ok(cli::Tested::Cases { failed: 0 }) => ExitCode::SUCCESS,
            Ok(cli::Tested::Cases { .. }) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("switchyard: {e:#}");
                ExitCode::FAILURE
            }
        },
        PolicyCommand::Replay(r) => match runtime.block_on(cli::policy_replay(&r)) {
            Ok(done) if done.differing() == 0 => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("switchyard: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}
