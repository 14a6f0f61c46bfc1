#!/usr/bin/env bash
# Starts Azurite's blob service (the Azure Storage emulator) on a free loopback port, for the
# kluis-blob tests and benches. Installs the pinned version (tools/azurite/package-lock.json) on
# first use with `npm ci` into tools/azurite/node_modules (never globally). Each start uses a
# fresh, empty storage folder. Prints the two export lines on its last lines:
#   export KLUIS_TEST_AZURITE_URL=http://127.0.0.1:PORT/devstoreaccount1   (no trailing slash)
#   export KLUIS_TEST_AZURITE_DIR=/…/.build/azurite/data                     (its storage folder)
#
#   eval "$(bash scripts/start-azurite.sh)"     # exports both in this shell
#   bash scripts/start-azurite.sh --stop        # stops the server this script started
#
# Files: .build/azurite/{pid,port,log,data/}.
set -euo pipefail
cd "$(dirname "$0")/.."
tools="$PWD/tools/azurite"
state="$PWD/.build/azurite"
data="$state/data"
mkdir -p "$state"

exports() {
  echo "export KLUIS_TEST_AZURITE_URL=http://127.0.0.1:$1/devstoreaccount1"
  echo "export KLUIS_TEST_AZURITE_DIR=$data"
}

# Any HTTP answer (Azurite says 400 to a bare GET) means it is up.
answers() {
  local code
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/devstoreaccount1?comp=list" 2>/dev/null || true)"
  [ -n "$code" ] && [ "$code" != "000" ]
}

if [ "${1:-}" = "--stop" ]; then
  if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
    kill "$(cat "$state/pid")"
    echo "stopped azurite-blob (pid $(cat "$state/pid"))" >&2
  fi
  rm -f "$state/pid" "$state/port"
  exit 0
fi

# Already running (started by an earlier call)? Reuse it.
if [ -f "$state/pid" ] && [ -f "$state/port" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
  port="$(cat "$state/port")"
  if answers "$port"; then
    exports "$port"
    exit 0
  fi
fi

want="$(node -e "console.log(require('$tools/package-lock.json').packages['node_modules/azurite'].version)")"
have="$(node -e "try{console.log(require('$tools/node_modules/azurite/package.json').version)}catch(e){console.log('none')}")"
if [ "$have" != "$want" ] || [ ! -x "$tools/node_modules/.bin/azurite-blob" ]; then
  echo "installing azurite $want into $tools/node_modules (npm ci)" >&2
  (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

rm -rf "$data"
mkdir -p "$data"
# A free loopback port: ask the kernel for one.
port="$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
nohup "$tools/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$port" \
  --location "$data" --skipApiVersionCheck --disableTelemetry >"$state/log" 2>&1 &
echo $! >"$state/pid"
echo "$port" >"$state/port"

for _ in $(seq 1 150); do
  if answers "$port"; then
    echo "azurite-blob $want answering on 127.0.0.1:$port (pid $(cat "$state/pid")), data in $data" >&2
    exports "$port"
    exit 0
  fi
  if ! kill -0 "$(cat "$state/pid")" 2>/dev/null; then
    echo "azurite-blob exited; log:" >&2
    cat "$state/log" >&2
    exit 1
  fi
  sleep 0.2
done
echo "azurite-blob did not answer on 127.0.0.1:$port within 30 s; log:" >&2
cat "$state/log" >&2
exit 1
