//! Snapshot tests of every command with trycmd (`tests/cmd/*.toml`): output and exit code,
//! including the errors for a wrong passphrase, a missing data directory, a corrupt keyring and
//! an unknown tenant. Cases run in a sandbox copy of `tests/cmd/ready.in` (an initialised data
//! directory with tenant `acme` and three records; keyring passphrase "trycmd passphrase") or
//! `tests/cmd/corrupt.in` (the same with one flipped byte in the keyring), or `tests/cmd/backup.in`
//! (a copy of `ready.in/data`, `good/`: `kluis backup` of that directory, and damaged copies of it:
//! `bad-edited/` with a line appended to its `schema.toml`, `bad-truncated/` with its database cut
//! to half, `bad-missing/` without its database, `bad-manifest/` with the record count in its
//! manifest raised by one).
//! Regenerate with `TRYCMD=overwrite cargo test -p kluis-cli --test cli` and review the diff.

#[test]
fn cli_snapshots() {
    trycmd::TestCases::new().case("tests/cmd/*.toml");
}
