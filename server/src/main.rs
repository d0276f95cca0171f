//! The `ringlog` binary: the command line, the log (`tracing` to stderr, filtered by
//! `RUST_LOG`, coloured only on a terminal without `NO_COLOR`), and `serve`'s stop on SIGTERM
//! or SIGINT.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use ringlog_engine::rt::EXIT_CODE_IO_URING_UNAVAILABLE;
use ringlog_engine::shard::EngineError;
use ringlog_server::admin::{self, AdminClient};
use ringlog_server::cli::{self, Cli, Command, ServeArgs, EXIT_CODE_CONFIG};
use ringlog_server::server::{Server, ServerError};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(log_in_colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Topic(args) => admin_command(&args.bootstrap, |client| {
            admin::topic::run(client, &args.command)
        }),
        Command::Group(args) => admin_command(&args.bootstrap, |client| {
            admin::group::run(client, &args.command)
        }),
    }
}

/// Whether log lines may carry ANSI colours: only on a terminal, and not when `NO_COLOR` is
/// set to anything but the empty string (<https://no-color.org>). The journal, a file or a
/// pipe gets plain text that `grep` and log shippers read as written.
fn log_in_colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Connects to `bootstrap`, runs one admin command, prints its output or its error.
fn admin_command(
    bootstrap: &str,
    command: impl FnOnce(&mut AdminClient) -> Result<String, admin::AdminError>,
) -> ExitCode {
    let result = AdminClient::connect(bootstrap).and_then(|mut client| command(&mut client));
    match result {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            print_chain(&error);
            exit(cli::admin_exit_code(&error))
        }
    }
}

fn print_chain(error: &dyn std::error::Error) {
    eprintln!("ringlog: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match args.load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("ringlog: configuration: {error}");
            return exit(EXIT_CODE_CONFIG);
        }
    };
    // SIGINT and SIGTERM are taken by `wait_for_stop_signal`; block them before any thread
    // starts so every thread inherits the mask.
    let signals = block_stop_signals();
    let server = match Server::start(config) {
        Ok(server) => server,
        Err(error) => return report(&error),
    };
    let signal = wait_for_stop_signal(&signals);
    tracing::info!(signal, "stopping");
    match server.stop() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report(&error),
    }
}

fn report(error: &ServerError) -> ExitCode {
    print_chain(error);
    let unavailable =
        matches!(error, ServerError::Engine(EngineError::Runtime(e)) if e.ring_setup().is_some());
    exit(if unavailable {
        EXIT_CODE_IO_URING_UNAVAILABLE
    } else {
        1
    })
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Blocks SIGINT and SIGTERM in the calling thread (and so in threads it starts).
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialized by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set is a valid sigset_t we own; the calls only read and write it and the
    // calling thread's signal mask.
    unsafe {
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGINT);
        libc::sigaddset(&raw mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
    }
    set
}

/// Waits for SIGINT or SIGTERM; returns its name.
fn wait_for_stop_signal(set: &libc::sigset_t) -> &'static str {
    let mut signal = 0;
    // SAFETY: `set` is a valid, initialized signal set; `signal` is written by sigwait.
    while unsafe { libc::sigwait(set, &raw mut signal) } != 0 {}
    if signal == libc::SIGTERM {
        "SIGTERM"
    } else {
        "SIGINT"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(log_in_colour(true, None));
        assert!(
            log_in_colour(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!log_in_colour(true, Some(OsStr::new("1"))));
        assert!(!log_in_colour(false, None));
        assert!(!log_in_colour(false, Some(OsStr::new(""))));
    }
}
