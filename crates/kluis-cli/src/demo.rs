//! `kluis demo`.

use crate::cli::Global;
use crate::error::{CliError, Result};
use crate::out::Report;

/// Runs the demo.
pub async fn run(global: &Global) -> Result<Report> {
    let _ = global;
    Err(CliError::NotAvailable("the demo"))
}
