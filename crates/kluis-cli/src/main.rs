//! The `kluis` binary (see `kluis --help` and docs/CLI.md).

fn main() -> std::process::ExitCode {
    kluis_cli::main_entry()
}
