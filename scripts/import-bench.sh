#!/usr/bin/env bash
# `kluis import` of 10,000 records: records/s, fsyncs per record, statements per record.
#
#   bash scripts/import-bench.sh            # SQLite (the data directory's default engine)
#   KLUIS_IMPORT_POSTGRES=1 bash scripts/import-bench.sh   # also PostgreSQL statements and rate
#
# Input: N JSONL lines (KLUIS_IMPORT_N, default 10,000) of the collection `absence` with the schema
# of crates/kluis-store/benches/records.rs (its SCHEMA constant, read from that file) and the same
# values as that bench: 2 medical + 4 general fields, 200 subjects. Each run imports into a fresh
# data directory (`kluis init` and `kluis tenant add` untimed) with the release binary.
#
# - records/s: N / wall time of the whole `kluis import` command (process start, keyring unlock
#   with Argon2id, migrations check, parsing and checking every line, the import, the audit entry),
#   median of KLUIS_IMPORT_ROUNDS (3) runs. The same for a 1-line file is printed as the fixed
#   cost of the command.
# - fsyncs/record: `strace -f -c -e trace=fsync,fdatasync` over the N-line import; the calls of
#   the 1-line import are subtracted for the marginal figure.
# - statements/record (SQLite): callgrind over a KLUIS_IMPORT_CALLGRIND_N-line (default N) import and a
#   1-line one, counting calls into the bundled SQLite by caller. sqlx-sqlite 0.8.6 starts every
#   statement execution in `ExecuteIter::next` (connection/execute.rs) with one reset and one
#   sqlite3_clear_bindings before binding (its other clear_bindings calls come from
#   `VirtualStatement::reset`, for cached statements and on drop), so statements = the
#   clear_bindings calls from ExecuteIter::next, plus sqlite3_exec calls made outside SQLite
#   (connection setup). sqlite3_step is statements + rows returned; sqlite3_prepare_v3 shows the
#   statement cache at work. The marginal figure subtracts the 1-line import.
# - PostgreSQL (KLUIS_IMPORT_POSTGRES=1, server from KLUIS_TEST_POSTGRES_URL): the same import into
#   a fresh database through `--store`, with `ALTER DATABASE .. SET log_statement = 'all'` on that
#   database only (parameters not logged); statements = its lines in the server log (KLUIS_PG_LOG, default
#   /var/log/postgresql/postgresql-15-main.log) that are an `execute` or a `statement`.
#
# KLUIS_IMPORT_PARTS (default "rate fsyncs statements") picks the parts; KLUIS_BIN names a kluis
# binary to use instead of building one. Needs cargo, python3, strace, valgrind; respects
# CARGO_TARGET_DIR.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
N=${KLUIS_IMPORT_N:-10000}
CG_N=${KLUIS_IMPORT_CALLGRIND_N:-$N}
ROUNDS=${KLUIS_IMPORT_ROUNDS:-3}
cd "$root"
if [ -n "${KLUIS_BIN:-}" ]; then kluis=$KLUIS_BIN; else
  cargo build --release -p kluis-cli >&2
  kluis="$target/release/kluis"
fi
parts=" ${KLUIS_IMPORT_PARTS:-rate fsyncs statements} "
want() { [[ "$parts" == *" $1 "* ]]; }
export KLUIS_PASSPHRASE="import bench passphrase"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

# The bench's schema, from the bench's source.
python3 - "$root/crates/kluis-store/benches/records.rs" > "$work/schema.toml" <<'PY'
import re, sys
src = open(sys.argv[1], encoding="utf-8").read()
m = re.search(r'const SCHEMA: &str = r#"(.*?)"#;', src, re.S)
if not m:
    sys.exit("no SCHEMA constant in " + sys.argv[1])
print(m.group(1).strip())
PY
gen() { # n first-index file
  python3 - "$1" "$2" > "$3" <<'PY'
import json, sys
n, first = int(sys.argv[1]), int(sys.argv[2])
for i in range(first, first + n):
    print(json.dumps({
        "id": f"imp-{i:06d}", "subject": f"emp-{i % 200}",
        "start_date": "2025-03-01", "end_date": "2025-03-14", "work_capacity": str(i % 101),
        "employee_number": f"E{i % 200:06d}",
        "diagnosis": f"diagnosis text number {i} with some words",
        "doctor_notes": f"notes {i}: rest, reduce hours, review in two weeks",
    }))
PY
}
gen "$N" 0 "$work/n.jsonl"
gen "$CG_N" 0 "$work/cg.jsonl"
gen 1 0 "$work/one.jsonl"

store_args=()
fresh() { # a new, initialised data directory with tenant `bench`
  rm -rf "$work/d"
  "$kluis" --data-dir "$work/d" "${store_args[@]}" init --schema "$work/schema.toml" >/dev/null
  "$kluis" --data-dir "$work/d" "${store_args[@]}" tenant add bench >/dev/null
}
import() { "$kluis" --data-dir "$work/d" "${store_args[@]}" import --tenant bench --collection absence "$1" >/dev/null; }
seconds() { # file: wall seconds of one import into a fresh directory
  fresh
  local t0 t1
  t0=$(date +%s.%N); import "$1"; t1=$(date +%s.%N)
  python3 -c "print($t1 - $t0)"
}
median() { python3 -c "import sys, statistics; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }

rate() { # label
  local times=() t
  for _ in $(seq "$ROUNDS"); do times+=("$(seconds "$work/n.jsonl")"); done
  t=$(median "${times[@]}")
  one=$(seconds "$work/one.jsonl")
  python3 -c "print(f'$1: {$N} records in {$t:.2f} s (median of $ROUNDS; runs: ${times[*]}): {$N / $t:,.0f} records/s; a 1-record import takes {$one:.2f} s')"
}

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; kluis at $(git rev-parse --short HEAD)"
want rate && rate "sqlite import"

fsyncs() { # file: fsync + fdatasync calls of one import into a fresh directory
  fresh
  strace -f -c -e trace=fsync,fdatasync -o "$work/strace.txt" \
    "$kluis" --data-dir "$work/d" "${store_args[@]}" import --tenant bench --collection absence "$1" >/dev/null
  awk '$NF == "fsync" || $NF == "fdatasync" { s += $4 } END { print s + 0 }' "$work/strace.txt"
}
if want fsyncs; then
fn=$(fsyncs "$work/n.jsonl"); f1=$(fsyncs "$work/one.jsonl")
python3 -c "print(f'sqlite fsyncs: {$fn} for {$N} records ({$fn / $N:.3f}/record); {$f1} for 1 record; marginal {($fn - $f1) / ($N - 1):.3f}/record')"
fi

calls() { # file: statements executed, sqlite3_step calls, sqlite3_prepare_v3 calls (callgrind)
  fresh
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    "$kluis" --data-dir "$work/d" "${store_args[@]}" import --tenant bench --collection absence "$1" \
    >/dev/null 2>"$work/valgrind.log"
  python3 - "$work/cg.out" <<'PY'
import re, sys
# Calls per (callee, caller) from the callgrind output: fn= sets the caller, cfn= the callee,
# calls= counts; names are given once per id and referred to by "(id)" after.
names, acc, caller, callee = {}, {}, None, None
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if m:
        if m.group(3):
            names[m.group(2)] = m.group(3)
        if m.group(1) == "fn":
            caller = names.get(m.group(2), "")
        else:
            callee = names.get(m.group(2), "")
        continue
    if line.startswith("calls=") and callee and callee.startswith("sqlite3_"):
        key = (callee, caller)
        acc[key] = acc.get(key, 0) + int(line.split("=")[1].split()[0])
def total(callee, caller=lambda c: True):
    return sum(n for (e, c), n in acc.items() if e == callee and caller(c))
# One statement execution = one sqlite3_clear_bindings from ExecuteIter::next (sqlx-sqlite 0.8.6,
# connection/execute.rs, before binding); plus what sqlx runs through sqlite3_exec itself.
stmts = total("sqlite3_clear_bindings", lambda c: "ExecuteIter" in c)
execs = total("sqlite3_exec", lambda c: not c.startswith("sqlite3"))
if stmts == 0:
    sys.exit("no sqlite3_clear_bindings call from ExecuteIter::next: the counting method does not fit this build")
print(stmts + execs, total("sqlite3_step"), total("sqlite3_prepare_v3"))
PY
}
if want statements; then
read -r s_n st_n pr_n < <(calls "$work/cg.jsonl")
read -r s_1 st_1 pr_1 < <(calls "$work/one.jsonl")
python3 - <<PY
n = $CG_N
for label, s, st, pr in (("$CG_N records", $s_n, $st_n, $pr_n), ("1 record", $s_1, $st_1, $pr_1)):
    print(f"sqlite statements, {label}: {s} statements executed, {st} sqlite3_step, {pr} sqlite3_prepare_v3")
print(f"sqlite statements/record: {$s_n / n:.2f} gross, {($s_n - $s_1) / (n - 1):.2f} marginal; "
      f"sqlite3_step/record {($st_n - $st_1) / (n - 1):.2f} marginal")
PY
fi

if [ "${KLUIS_IMPORT_POSTGRES:-0}" = 1 ]; then
  pg_url=${KLUIS_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
  pg_log=${KLUIS_PG_LOG:-/var/log/postgresql/postgresql-15-main.log}
  db="kluis_import_bench_$$"
  base=${pg_url%/*}
  psql -q "$pg_url" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  cleanup_pg() { psql -q "$pg_url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true; rm -rf "$work"; }
  trap cleanup_pg EXIT
  store_args=(--store "$base/$db")
  fresh_pg() { # empty the database, then init + tenant add
    psql -q "$pg_url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
    rm -rf "$work/d"
    "$kluis" --data-dir "$work/d" "${store_args[@]}" init --schema "$work/schema.toml" >/dev/null
    "$kluis" --data-dir "$work/d" "${store_args[@]}" tenant add bench >/dev/null
  }
  fresh() { fresh_pg; }
  want rate && rate "postgres import"
  count_pg() { # file: statements the import sent to the database
    fresh_pg
    psql -q "$pg_url" -c "ALTER DATABASE $db SET log_statement = 'all'" \
      -c "ALTER DATABASE $db SET log_parameter_max_length = 0"
    local before after
    before=$(wc -l < "$pg_log")
    import "$1"
    sleep 1
    after=$(wc -l < "$pg_log")
    psql -q "$pg_url" -c "ALTER DATABASE $db RESET ALL"
    tail -n "+$((before + 1))" "$pg_log" | head -n "$((after - before))" |
      grep -E "@$db LOG: +(execute [^:]*|statement):" -c
  }
  if want statements; then
    sn=$(count_pg "$work/n.jsonl"); s1=$(count_pg "$work/one.jsonl")
    python3 -c "print(f'postgres statements: {$sn} for {$N} records ({$sn / $N:.2f}/record); {$s1} for 1 record; marginal {($sn - $s1) / ($N - 1):.2f}/record')"
  fi
fi
