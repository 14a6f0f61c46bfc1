#!/usr/bin/env bash
# Starts moto's server (a real HTTP implementation of the AWS KMS API) on a free loopback port,
# for the kluis-kms tests and benches. Installs it on first use into a virtualenv in the project's
# ignored build folder. Prints `KLUIS_TEST_MOTO_URL=http://127.0.0.1:PORT` on its last line.
#
#   eval "$(bash scripts/start-moto.sh)"     # exports KLUIS_TEST_MOTO_URL in this shell
#   bash scripts/start-moto.sh --stop        # stops the server this script started
#
# Files: .build/moto-venv (virtualenv), .build/moto/{pid,port,log}.
set -euo pipefail
cd "$(dirname "$0")/.."
MOTO_VERSION="5.1.22"
root="$PWD/.build"
venv="$root/moto-venv"
state="$root/moto"
mkdir -p "$state"

if [ "${1:-}" = "--stop" ]; then
  if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
    kill "$(cat "$state/pid")"
    echo "stopped moto_server (pid $(cat "$state/pid"))" >&2
  fi
  rm -f "$state/pid" "$state/port"
  exit 0
fi

# Already running (started by an earlier call)? Reuse it.
if [ -f "$state/pid" ] && [ -f "$state/port" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
  port="$(cat "$state/port")"
  if curl -fsS -o /dev/null "http://127.0.0.1:$port/moto-api/" 2>/dev/null; then
    echo "export KLUIS_TEST_MOTO_URL=http://127.0.0.1:$port"
    exit 0
  fi
fi

if [ ! -x "$venv/bin/moto_server" ] || ! "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  echo "installing moto[server]==$MOTO_VERSION into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
fi

# A free loopback port: ask the kernel for one.
port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$state/log" 2>&1 &
echo $! >"$state/pid"
echo "$port" >"$state/port"

for _ in $(seq 1 100); do
  if curl -fsS -o /dev/null "http://127.0.0.1:$port/moto-api/" 2>/dev/null; then
    echo "moto_server $MOTO_VERSION answering on 127.0.0.1:$port (pid $(cat "$state/pid"))" >&2
    echo "export KLUIS_TEST_MOTO_URL=http://127.0.0.1:$port"
    exit 0
  fi
  if ! kill -0 "$(cat "$state/pid")" 2>/dev/null; then
    echo "moto_server exited; log:" >&2
    cat "$state/log" >&2
    exit 1
  fi
  sleep 0.2
done
echo "moto_server did not answer on 127.0.0.1:$port within 20 s; log:" >&2
cat "$state/log" >&2
exit 1
