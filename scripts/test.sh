#!/usr/bin/env bash
# The whole test suite: formatting, lints, dependency checks, tests, bench and fuzz smoke runs.
# `.ci/run` calls exactly this. Usage: bash scripts/test.sh
#   KLUIS_FUZZ_SECONDS=N   seconds per fuzz target (default 15; 0 skips the fuzz smoke run)
#   KLUIS_SOAK=1           also run the slow soak tests (ignored by default)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
export RUST_BACKTRACE=1
start=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - start ))s)"; }

step "toolchain"
cargo --version
rustc --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, -D warnings)"
cargo clippy --workspace --all-targets --all-features -- -D warnings
step "kluis-service, kluis-blob and kluis-cli build without kluis-store's SQL layer (feature sql-layer off: they use Store's public methods only)"
cargo check -p kluis-service -p kluis-blob -p kluis-cli --all-targets
step "cargo clippy kluis-core without ring (pure Rust build)"
cargo clippy -p kluis-core --no-default-features -- -D warnings

step "dependency checks (cargo deny)"
if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "cargo-deny not installed: installing it from crates.io"
  cargo install cargo-deny --locked
fi
cargo deny --all-features check licenses bans sources
# Advisories need the RustSec database (a git clone from GitHub). Say plainly if it is unreachable.
if timeout 120 cargo deny --all-features check advisories 2>/tmp/kluis-deny-adv.log; then
  echo "advisories: ok"
elif grep -qiE "failed to (fetch|clone|open)|network|resolve|could not|unable to" /tmp/kluis-deny-adv.log; then
  echo "SKIPPED: advisory check (the RustSec database could not be fetched from this machine):"
  tail -3 /tmp/kluis-deny-adv.log
else
  cat /tmp/kluis-deny-adv.log
  exit 1
fi

step "servers for the tests: PostgreSQL and MariaDB (started if not running), Azurite and moto (installed into the project and started on loopback), an SMB 3 share (Samba on loopback, mounted with smbnetfs)"
# Each script prints `export VAR=...` lines; the suites read them. In CI (CI=true) a suite whose
# server is missing fails; elsewhere it prints "SKIPPED: <server> (<why>)".
stop_servers() {
  bash scripts/start-azurite.sh --stop || true
  bash scripts/start-moto.sh --stop || true
  bash scripts/start-smb.sh --stop || true
}
trap stop_servers EXIT
for script in start-databases start-azurite start-moto start-smb; do
  if out="$(bash "scripts/$script.sh")"; then
    eval "$out"
    echo "$out"
  elif [ "${CI:-}" = "true" ]; then
    echo "scripts/$script.sh failed, and CI needs its servers" >&2
    exit 1
  else
    echo "SKIPPED: scripts/$script.sh failed; the suites that need its servers will say SKIPPED"
  fi
done

step "cargo test (workspace)"
if [ "${KLUIS_SOAK:-0}" = "1" ]; then
  cargo test --workspace --all-features -- --include-ignored
else
  cargo test --workspace --all-features
fi

step "benches smoke run (each bench once, in the test profile; figures come from 'cargo bench', see BENCHMARKS.md)"
# The test profile reuses the dependencies the step above built: no release rebuild for a smoke
# run. Criterion runs every case once under --test; documents.rs and keys.rs take --test as
# "small sizes".
# Every [[bench]] target by name (`--benches` would also run every library's unit tests again).
mapfile -t benches < <(sed -n '/^\[\[bench\]\]/{n;s/^name = "\(.*\)"/\1/p}' benches/Cargo.toml crates/*/Cargo.toml | sort -u)
cargo test --workspace --all-features "${benches[@]/#/--bench=}" -- --test

if [ "${KLUIS_FUZZ_SECONDS:-15}" != "0" ]; then
  step "fuzz smoke run"
  FUZZ_SECONDS="${KLUIS_FUZZ_SECONDS:-15}" bash fuzz/run-smoke.sh
else
  echo "SKIPPED: fuzz smoke run (KLUIS_FUZZ_SECONDS=0)"
fi

step "all checks passed"
