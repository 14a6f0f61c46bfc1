#!/usr/bin/env bash
# Starts an SMB 3.1.1 share for the kluis-blob tests and benches: Samba's smbd on a free loopback
# port (encryption and signing required, like Azure Files), mounted through the smbnetfs FUSE
# client twice (two SMB sessions, as two VMs would have). Needs root and /dev/fuse; installs the
# Debian packages samba smbclient smbnetfs fuse3 if they are missing, and adds the system user
# kluissmb (no login, no home) that smbd does the share's file I/O as. Prints on its last lines:
#   export KLUIS_TEST_SMB_DIR=/…/.build/smb/main/mnt/127.0.0.1:PORT/data    (the share, client 1)
#   export KLUIS_TEST_SMB_DIR2=/…/.build/smb/main/mnt2/127.0.0.1:PORT/data  (the same share, client 2)
#   export KLUIS_TEST_SMB_SERVER_DIR=/…                                     (the server's folder of it)
#
#   eval "$(bash scripts/start-smb.sh)"       # exports them in this shell (reuses a running share)
#   bash scripts/start-smb.sh --stop          # stops every share this script started
#
# Tests that take a server away start one of their own:
#   bash scripts/start-smb.sh --instance NAME          # another server + one mount, same exports
#   bash scripts/start-smb.sh --server-stop NAME       # kills that instance's smbd (SIGKILL: the share goes away)
#   bash scripts/start-smb.sh --server-start NAME      # starts it again on the same port and folder
#   bash scripts/start-smb.sh --stop NAME
#
# Files: .build/smb/NAME/{smb.conf,private,lock,…,log/,mnt/,mnt2/,share/}; the shared folder is
# .build/smb/NAME/share unless the Samba user cannot reach it there (then a folder under /tmp,
# recorded in .build/smb/NAME/share-path).
set -euo pipefail
cd "$(dirname "$0")/.."
base="$PWD/.build/smb"
SMB_USER=kluissmb
SMB_PASS="kluis-test-$(id -u)"   # loopback only, test data only

log() { echo "$*" >&2; }

ensure_packages() {
  local missing=0 c
  for c in smbd smbnetfs smbclient smbpasswd; do command -v "$c" >/dev/null 2>&1 || missing=1; done
  command -v fusermount >/dev/null 2>&1 || command -v fusermount3 >/dev/null 2>&1 || missing=1
  [ "$missing" = 0 ] && return 0
  [ "$(id -u)" = 0 ] || { log "samba, smbnetfs and fuse3 are missing and only root can install them"; return 1; }
  log "installing samba smbclient smbnetfs fuse3 (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends samba smbclient smbnetfs fuse3 >&2
}

unmount() {
  if grep -qF " $1 " /proc/mounts; then
    fusermount -u "$1" 2>/dev/null || fusermount3 -u "$1" 2>/dev/null || fusermount -uz "$1" 2>/dev/null || true
  fi
}

kill_pidfile() {
  local f=$1 sig=${2:-TERM} p i
  [ -f "$f" ] || return 0
  p=$(cat "$f")
  if kill -0 "$p" 2>/dev/null; then
    kill -"$sig" "$p" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$p" 2>/dev/null || true
  fi
  rm -f "$f"
}

# smbd's worker children carry the instance's config path in their command line. $2: the signal
# for the main smbd (TERM; KILL for a crash).
kill_server() {
  local R=$1 p
  kill_pidfile "$R/smbd.pid" "${2:-TERM}"
  for p in $(grep -lsF -- "$R/smb.conf" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
    case "$(cat /proc/"$p"/comm 2>/dev/null)" in
      smbd|samba-dcerpcd|rpcd_*) kill -KILL "$p" 2>/dev/null || true ;;
    esac
  done
}

stop_instance() {
  local R="$base/$1"
  [ -d "$R" ] || return 0
  unmount "$R/mnt"; unmount "$R/mnt2"
  kill_pidfile "$R/smbnetfs.pid"; kill_pidfile "$R/smbnetfs2.pid"
  kill_server "$R"
  if [ -f "$R/share-path" ]; then
    case "$(cat "$R/share-path")" in /tmp/kluis-smb.*/data) rm -rf -- "$(dirname "$(cat "$R/share-path")")" ;; esac
  fi
  rm -rf -- "$R"
  log "stopped smb share $1"
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_server() {
  local R=$1 port i
  port=$(cat "$R/port")
  setsid smbd --foreground --no-process-group -s "$R/smb.conf" --debug-stdout -d 1 \
    >>"$R/log/smbd.stdout" 2>&1 </dev/null &
  echo $! >"$R/smbd.pid"
  for i in $(seq 1 200); do listening "$port" && return 0; sleep 0.05; done
  log "smbd did not listen on 127.0.0.1:$port; log:"; tail -20 "$R/log/smbd.stdout" >&2
  return 1
}

# Mounts the share at $R/$1 with smbnetfs (pid in $R/$2); waits until a directory listing works.
mount_client() {
  local R=$1 mnt=$2 pidfile=$3 port i dir
  port=$(cat "$R/port")
  mkdir -p "$R/$mnt"
  HOME="$R/home" setsid smbnetfs "$R/$mnt" -f \
    -o "config=$R/home/.smb/smbnetfs.conf,use_libsecret=false,big_writes,log_file=$R/log/$mnt.log" \
    >"$R/log/$mnt.stdout" 2>&1 </dev/null &
  echo $! >"$R/$pidfile"
  dir="$R/$mnt/127.0.0.1:$port/data"
  # smbnetfs answers stat() of the host and share levels itself; only a listing proves the session.
  for i in $(seq 1 200); do ls -A "$dir" >/dev/null 2>&1 && return 0; sleep 0.05; done
  log "the share is not reachable through smbnetfs at $dir; see $R/log"
  return 1
}

exports() {
  local R="$base/$1" port
  port=$(cat "$R/port")
  echo "export KLUIS_TEST_SMB_DIR=$R/mnt/127.0.0.1:$port/data"
  [ -d "$R/mnt2" ] && echo "export KLUIS_TEST_SMB_DIR2=$R/mnt2/127.0.0.1:$port/data"
  echo "export KLUIS_TEST_SMB_SERVER_DIR=$(cat "$R/share-path")"
}

running() {
  local R="$base/$1"
  [ -f "$R/smbd.pid" ] && kill -0 "$(cat "$R/smbd.pid")" 2>/dev/null || return 1
  [ -f "$R/smbnetfs.pid" ] && kill -0 "$(cat "$R/smbnetfs.pid")" 2>/dev/null || return 1
  ls -A "$R/mnt/127.0.0.1:$(cat "$R/port")/data" >/dev/null 2>&1
}

start_instance() {
  local name=$1 clients=$2 R="$base/$1" share port
  [ "$(id -u)" = 0 ] || { log "an SMB share for the tests needs root (smbd, a FUSE mount)"; return 1; }
  [ -c /dev/fuse ] || { log "/dev/fuse is missing: no FUSE mounts on this machine"; return 1; }
  ensure_packages
  if running "$name"; then exports "$name"; return 0; fi
  stop_instance "$name" 2>/dev/null || true
  mkdir -p "$R"/{private,lock,state,cache,pid,log,ncalrpc,home/.smb}
  chmod 0700 "$R/private"
  id "$SMB_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$SMB_USER"
  # smbd does the share's file I/O as $SMB_USER, who must reach the folder.
  share="$R/share"
  mkdir -p "$share"; chown "$SMB_USER:" "$share"
  if ! runuser -u "$SMB_USER" -- test -w "$share" -a -x "$share" 2>/dev/null; then
    rm -rf "$share"
    share=$(mktemp -d /tmp/kluis-smb.XXXXXX); chmod 0711 "$share"
    mkdir "$share/data"; chown "$SMB_USER:" "$share/data"; share="$share/data"
  fi
  echo "$share" >"$R/share-path"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
  echo "$port" >"$R/port"
  cat >"$R/smb.conf" <<EOF
[global]
    server role = standalone server
    workgroup = WORKGROUP
    netbios name = KLUISTEST
    interfaces = 127.0.0.1/8
    bind interfaces only = yes
    smb ports = $port
    disable netbios = yes
    server min protocol = SMB3
    server max protocol = SMB3_11
    smb encrypt = required
    server signing = mandatory
    map to guest = never
    passdb backend = tdbsam:$R/private/passdb.tdb
    private dir = $R/private
    lock directory = $R/lock
    state directory = $R/state
    cache directory = $R/cache
    pid directory = $R/pid
    ncalrpc dir = $R/ncalrpc
    log file = $R/log/log.%m
    log level = 1
    load printers = no
    printing = bsd
    printcap name = /dev/null
    disable spoolss = yes
    unix extensions = no
    rpc start on demand helpers = no

[data]
    path = $share
    read only = no
    valid users = $SMB_USER
    create mask = 0644
    directory mask = 0755
EOF
  cat >"$R/home/.smb/smb.conf" <<EOF
[global]
    client min protocol = SMB3
    client max protocol = SMB3_11
    client smb encrypt = required
    client signing = required
EOF
  cat >"$R/home/.smb/smbnetfs.conf" <<EOF
smb_query_browsers  "false"
use_libsecret       "false"
show_hidden_hosts   "true"
stat_workaround_depth "0"
stat_workaround_enable_default_entries "false"
config_update_period 0
auth "$SMB_USER" "$SMB_PASS"
EOF
  chmod 600 "$R/home/.smb/smbnetfs.conf"
  printf '%s\n%s\n' "$SMB_PASS" "$SMB_PASS" | smbpasswd -c "$R/smb.conf" -s -a "$SMB_USER" >"$R/log/smbpasswd.log" 2>&1 \
    || { log "smbpasswd failed: $(cat "$R/log/smbpasswd.log")"; return 1; }
  start_server "$R"
  mount_client "$R" mnt smbnetfs.pid
  if [ "$clients" = 2 ]; then mount_client "$R" mnt2 smbnetfs2.pid; fi
  log "smb share '$name': smbd $(smbd --version) on 127.0.0.1:$port (SMB 3.1.1, encrypted), $clients smbnetfs client(s) under $R, server folder $share"
  exports "$name"
}

case "${1:-}" in
  "") start_instance main 2 ;;
  --instance) start_instance "${2:?--instance NAME}" 1 ;;
  --server-stop) kill_server "$base/${2:?--server-stop NAME}" KILL; log "smbd of '$2' killed" ;;
  --server-start) start_server "$base/${2:?--server-start NAME}"; log "smbd of '$2' started" ;;
  --stop)
    if [ -n "${2:-}" ]; then
      stop_instance "$2"
    elif [ -d "$base" ]; then
      for d in "$base"/*/; do [ -d "$d" ] && stop_instance "$(basename "$d")"; done
    fi
    ;;
  *) log "usage: $0 [--stop [NAME] | --instance NAME | --server-stop NAME | --server-start NAME]"; exit 2 ;;
esac
