#!/usr/bin/env bash
# Fuzz smoke test: builds every cargo-fuzz target on the *stable* toolchain and runs each one for a
# bounded time over its committed seed corpus. Exits non-zero if any target crashes, times out,
# runs out of memory or fails to build. See docs/FUZZING.md.
#
#   bash fuzz/run-smoke.sh                  # all targets, 15 s each
#   FUZZ_SECONDS=60 bash fuzz/run-smoke.sh  # longer
#   bash fuzz/run-smoke.sh keyring_file     # some targets only
#
# Environment:
#   FUZZ_SECONDS       seconds of fuzzing per target (default 15)
#   FUZZ_RSS_LIMIT_MB  libFuzzer -rss_limit_mb (default 2048)
#   FUZZ_TIMEOUT       libFuzzer per-input -timeout in seconds (default 30)
#   FUZZ_TOOLCHAIN     rustup toolchain (default: $RUSTUP_TOOLCHAIN, else stable)
#   CARGO_FUZZ_VERSION cargo-fuzz version installed when it is missing (default 0.13.2)
#   FUZZ_SANITIZER     cargo-fuzz --sanitizer (default address; "none" needs no RUSTC_BOOTSTRAP)
#
# Stable rustc refuses -Zsanitizer=address, which cargo-fuzz passes; RUSTC_BOOTSTRAP=1 lets the
# stable compiler accept it (the same compiler, nightly-only flags unlocked). Only this fuzz
# workspace (its own target dir) is built that way.
set -uo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$FUZZ_DIR")"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-15}"
RSS_LIMIT_MB="${FUZZ_RSS_LIMIT_MB:-2048}"
INPUT_TIMEOUT="${FUZZ_TIMEOUT:-30}"
CARGO_FUZZ_VERSION="${CARGO_FUZZ_VERSION:-0.13.2}"
SANITIZER="${FUZZ_SANITIZER:-address}"

case "$SECONDS_PER_TARGET" in
  '' | *[!0-9]*) echo "run-smoke: FUZZ_SECONDS must be a whole number of seconds" >&2; exit 2 ;;
esac

if command -v rustup >/dev/null 2>&1; then
  export RUSTUP_TOOLCHAIN="${FUZZ_TOOLCHAIN:-${RUSTUP_TOOLCHAIN:-stable}}"
fi
if [ "$SANITIZER" != none ]; then
  export RUSTC_BOOTSTRAP=1
fi

start_all=$SECONDS
cd "$REPO_DIR" || exit 2
echo "run-smoke: $(rustc --version) (toolchain ${RUSTUP_TOOLCHAIN:-default}), sanitizer $SANITIZER, RUSTC_BOOTSTRAP=${RUSTC_BOOTSTRAP:-unset}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "run-smoke: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  # Not under RUSTC_BOOTSTRAP: a plain stable build of the tool.
  if ! env -u RUSTC_BOOTSTRAP cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked; then
    echo "run-smoke: FAIL: could not install cargo-fuzz" >&2
    exit 2
  fi
fi
echo "run-smoke: $(cargo fuzz --version)"

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list --fuzz-dir "$FUZZ_DIR")
fi
if [ "${#targets[@]}" -eq 0 ]; then
  echo "run-smoke: FAIL: no fuzz targets found" >&2
  exit 2
fi

# One build for all targets (optimised, debug assertions on).
build_start=$SECONDS
if ! cargo fuzz build --fuzz-dir "$FUZZ_DIR" --sanitizer "$SANITIZER"; then
  echo "run-smoke: FAIL: cargo fuzz build failed" >&2
  exit 1
fi
build_time=$((SECONDS - build_start))
echo "run-smoke: built ${#targets[@]} targets in ${build_time}s"

scratch="$(mktemp -d "${TMPDIR:-/tmp}/kluis-fuzz-smoke.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
logs="$FUZZ_DIR/artifacts/smoke-logs"
mkdir -p "$logs"

# A stuck run is killed a while after libFuzzer should have stopped by itself.
guard=()
if command -v timeout >/dev/null 2>&1; then
  guard=(timeout --kill-after=30 "$((SECONDS_PER_TARGET + INPUT_TIMEOUT + 120))")
fi

failed=0
summary=()
for t in "${targets[@]}"; do
  seeds="$FUZZ_DIR/corpus/$t"
  if [ ! -d "$seeds" ]; then
    summary+=("$(printf '%-16s FAIL  no seed corpus at %s' "$t" "${seeds#"$REPO_DIR"/}")")
    failed=1
    continue
  fi
  work="$scratch/$t"
  mkdir -p "$work"
  log="$logs/$t.log"
  echo "run-smoke: fuzzing $t for ${SECONDS_PER_TARGET}s (log: ${log#"$REPO_DIR"/})"
  t0=$SECONDS
  # New inputs go to the scratch directory (first corpus dir); the committed seeds (second dir)
  # are only read. Crash inputs go to fuzz/artifacts/<target>/ (cargo-fuzz's -artifact_prefix).
  "${guard[@]}" cargo fuzz run --fuzz-dir "$FUZZ_DIR" --sanitizer "$SANITIZER" "$t" "$work" "$seeds" -- \
    -max_total_time="$SECONDS_PER_TARGET" \
    -rss_limit_mb="$RSS_LIMIT_MB" \
    -timeout="$INPUT_TIMEOUT" \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  elapsed=$((SECONDS - t0))

  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)"
  speed="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)"
  rss="$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n1)"
  cov="$(grep -oE 'cov: [0-9]+' "$log" | tail -n1 | cut -d' ' -f2)"
  corp="$(grep -oE 'corp: [0-9]+' "$log" | tail -n1 | cut -d' ' -f2)"
  seeds_n="$(find "$seeds" -type f | wc -l)"
  new_n="$(find "$work" -type f | wc -l)"
  if [ "$rc" -eq 0 ] && grep -q '^Done [0-9]* runs' "$log"; then
    summary+=("$(printf '%-16s PASS  %3ss  %9s runs (%s/s)  cov %s  corpus %s (%s seeds, %s new)  peak RSS %s MB' \
      "$t" "$elapsed" "${runs:-?}" "${speed:-?}" "${cov:-?}" "${corp:-?}" "$seeds_n" "$new_n" "${rss:-?}")")
  else
    failed=1
    # The panic message (line after "panicked at"), else the sanitizer's or libFuzzer's verdict.
    what="$(awk '/ panicked at /{loc=$0; sub(/.* panicked at /, "", loc); getline msg; print msg " (at " loc ")"; exit}' "$log")"
    [ -n "$what" ] || what="$(grep -m1 -oE 'SUMMARY: (AddressSanitizer|libFuzzer): [a-zA-Z-]+' "$log" | sed 's/^SUMMARY: //' || true)"
    [ -n "$what" ] || what="$(grep -m1 -oE 'ERROR: [A-Za-z]+: .{0,80}' "$log" || true)"
    artifact="$(grep -m1 -oE 'Test unit written to [^ ]+' "$log" | sed 's/Test unit written to //' || true)"
    artifact="${artifact#"$REPO_DIR"/}"
    [ "$rc" -eq 124 ] && what="killed: no result after $((SECONDS_PER_TARGET + INPUT_TIMEOUT + 120))s"
    summary+=("$(printf '%-16s FAIL  exit %s: %s; input: %s; log: %s' \
      "$t" "$rc" "${what:-see log}" "${artifact:-none}" "${log#"$REPO_DIR"/}")")
    echo "----- last lines of $t log -----"
    tail -n 40 "$log"
    echo "--------------------------------"
  fi
done

echo
echo "run-smoke summary (${SECONDS_PER_TARGET}s per target; build ${build_time}s; total $((SECONDS - start_all))s):"
for line in "${summary[@]}"; do
  echo "  $line"
done
if [ "$failed" -ne 0 ]; then
  echo "run-smoke: FAIL (replay an input: RUSTC_BOOTSTRAP=1 cargo +stable fuzz run --fuzz-dir fuzz <target> <input>)"
  exit 1
fi
echo "run-smoke: PASS"
