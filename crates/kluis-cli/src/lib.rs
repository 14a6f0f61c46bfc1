//! # kluis-cli
//!
//! The `kluis` admin tool. The binary is a thin `main` over [`run`]; the library exposes the
//! pieces tests and benches drive in-process through the same code the commands use
//! ([`reencrypt::reencrypt`], [`env::Env`]). docs/CLI.md describes every command, the exit codes
//! and the data directory layout.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod access;
mod anonymise;
pub mod backup;
pub mod cli;
mod columns;
mod commands;
pub mod config;
mod demo;
pub mod env;
mod erasure;
pub mod error;
pub mod out;
pub mod package;
pub mod reencrypt;

use std::path::PathBuf;

use clap::Parser;

pub use error::{CliError, ExitCode, Result};

use crate::cli::{Cli, Command};
use crate::config::{FileConfig, Settings};
use crate::out::Report;

/// Parses the command line, runs the command, prints its report or its error, and returns the
/// exit code.
pub fn main_entry() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { ExitCode::Usage } else { ExitCode::Ok };
            // clap prints help, version and usage errors itself.
            let _ = e.print();
            return std::process::ExitCode::from(code.code());
        }
    };
    let json = cli.global.json;
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(ExitCode::Failure.code());
        }
    };
    match rt.block_on(run(cli)) {
        Ok(report) => match report.print(json) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::from(ExitCode::Failure.code())
            }
        },
        Err(e) => {
            let code = e.exit_code();
            if json {
                let v = serde_json::json!({ "error": e.to_string(), "exit_code": code.code() });
                eprintln!("{v}");
            } else {
                eprintln!("error: {}", config::one_line(&e.to_string()));
            }
            std::process::ExitCode::from(code.code())
        }
    }
}

/// The data directory from `--data-dir`/`KLUIS_DATA_DIR`, or `./kluis-data`.
fn data_dir(cli: &Cli) -> PathBuf {
    cli.global.data_dir.clone().unwrap_or_else(|| PathBuf::from("kluis-data"))
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<Report> {
    let dir = data_dir(&cli);
    let actor = cli
        .global
        .actor
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "kluis-cli".to_owned());
    match cli.command {
        Command::Init(args) => commands::init(&cli.global, &dir, args).await,
        Command::Demo => demo::run(&cli.global).await,
        Command::Schema(cli::SchemaCmd::Sql(args)) => commands::schema_sql(&dir, &args),
        command => {
            if !dir.is_dir() {
                return Err(CliError::NoDataDir(dir));
            }
            if !dir.join(config::CONFIG_FILE).is_file() {
                return Err(CliError::NotInitialised(dir));
            }
            let file = FileConfig::load(&dir)?;
            let settings = Settings::resolve(
                &dir,
                &file,
                cli.global.store.as_deref(),
                cli.global.blobs.as_deref(),
                None,
                cli.global.json,
            )?;
            env::run_job(settings, false, commands::CommandJob { command, actor }).await
        }
    }
}
