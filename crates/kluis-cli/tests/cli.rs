//! Snapshot tests of every command with trycmd (`tests/cmd/*.toml`): output and exit code,
//! including the errors for a wrong passphrase, a missing data directory, a corrupt keyring and
//! an unknown tenant. Cases run in a sandbox copy of `tests/cmd/ready.in` (an initialised data
//! directory with tenant `acme` and three records; keyring passphrase "trycmd passphrase") or
//! `tests/cmd/corrupt.in` (the same with one flipped byte in the keyring).
//! Regenerate with `TRYCMD=overwrite cargo test -p kluis-cli --test cli` and review the diff.

#[test]
fn cli_snapshots() {
    trycmd::TestCases::new().case("tests/cmd/*.toml");
}
