#!/bin/bash
# Install (or upgrade in place) and start faasd-py on Debian 12, Ubuntu 22.04+ or Raspberry Pi OS.
#
#   sudo ./install.sh                  install + start (re-run = upgrade; keeps password, config, data)
#   sudo ./install.sh --uninstall      stop and remove the service and the venv; keep config and data
#   sudo ./install.sh --uninstall --purge   ... and remove config, data, functions and logs too
#
# Options:
#   --prefix DIR     venv location (default /opt/faasd-py)
#   --config FILE    config file (default /etc/faasd-py/config.yaml, or $FAASD_PY_CONFIG)
#   --log FILE       daemon log when running without systemd (default /var/log/faasd-py.log)
#   --no-systemd     do not use systemctl: start containerd (if none answers), journald (if none
#                    runs) and the daemon in background. Automatic when PID 1 is not systemd.
#   --skip-apt       do not check/install distro packages
#   --timeout SEC    how long to wait for GET /healthz (default 120)
#
# Needs only the distro's package repository and PyPI (local mirrors are fine).
set -euo pipefail
umask 022

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$SRC/scripts/lib.sh"
# not the checkout: `python -m faasd_py...` would import the source tree instead of the venv
cd /

PREFIX=/opt/faasd-py
CONFIG=${FAASD_PY_CONFIG:-/etc/faasd-py/config.yaml}
LOG=/var/log/faasd-py.log
MODE=auto
UNINSTALL=0
PURGE=0
SKIP_APT=0
TIMEOUT=120
UNIT=/etc/systemd/system/faasd-py.service

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) PREFIX=${2:?}; shift ;;
    --config) CONFIG=${2:?}; shift ;;
    --log) LOG=${2:?}; shift ;;
    --no-systemd) MODE=direct ;;
    --systemd) MODE=systemd ;;
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 ;;
    --skip-apt) SKIP_APT=1 ;;
    --timeout) TIMEOUT=${2:?}; shift ;;
    -h|--help) usage 0 ;;
    *) warn "unknown option $1"; usage 2 ;;
  esac
  shift
done
[ "$PURGE" = 0 ] || UNINSTALL=1
need_root
if [ "$MODE" = auto ]; then
  if [ -d /run/systemd/system ]; then MODE=systemd; else MODE=direct; fi
fi
PY="$PREFIX/bin/python"
BUILD_DIR=$(mktemp -d /tmp/faasd-py-build.XXXXXX)
trap 'rm -rf "$BUILD_DIR"' EXIT
CONTAINERD_LOG="${LOG%.log}-containerd.log"

check_os() {
  local id="" like=""
  if [ -r /etc/os-release ]; then
    id=$(. /etc/os-release && echo "${ID:-}")
    like=$(. /etc/os-release && echo "${ID_LIKE:-}")
  fi
  case " $id $like " in
    *" debian "*|*" ubuntu "*|*" raspbian "*) ;;
    *) warn "untested distribution '${id:-unknown}': continuing, expect apt package names to differ" ;;
  esac
  command -v dpkg-query >/dev/null || die "this installer needs a Debian-based system (dpkg/apt)"
}

# Load the settings the daemon will use (config file + FAASD_PY_* env) into S_* variables.
# Without the venv (after --uninstall) the checkout's code runs on the system python (python3-yaml).
load_settings_env() {
  local out py=$PY
  if ! { [ -x "$PY" ] && "$PY" -c 'import faasd_py.install' 2>/dev/null; }; then
    py=$(python_for_venv) || die "no python >= 3.11 to read $CONFIG"
    export PYTHONPATH=$SRC
  fi
  out=$("$py" "$SRC/scripts/settings_env.py" "$CONFIG") || die "cannot read the settings from $CONFIG"
  unset PYTHONPATH
  eval "$out"
}

install_venv() {
  local py site build=$BUILD_DIR
  py=$(ensure_python)
  if [ -e "$PY" ] && ! "$PY" -c 'import sys' 2>/dev/null; then
    log "venv at $PREFIX is broken (python upgraded?): recreating"
    rm -rf "$PREFIX"
  fi
  if [ ! -x "$PY" ]; then
    log "creating venv $PREFIX with $py"
    "$py" -m venv "$PREFIX"
  fi
  # Build from a clean copy: the checkout may hold a dev venv, generated stubs or build dirs.
  mkdir -p "$build/src"
  tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
      --exclude=./faasd_py/runtime/_api --exclude='*.egg-info' --exclude=__pycache__ \
      --exclude=./.mypy_cache --exclude=./.ruff_cache --exclude=./.pytest_cache --exclude=./.scratch \
      -cf - . | tar -C "$build/src" -xf -
  "$PY" -c 'import setuptools, wheel' 2>/dev/null || "$PY" -m pip install -q 'setuptools>=68' wheel
  log "building and installing faasd-py into $PREFIX"
  "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$build/dist" "$build/src" >/dev/null
  "$PY" -m pip install -q "$build"/dist/faasd_py-*.whl
  # same version number on an upgrade from a newer checkout: replace the package files anyway
  "$PY" -m pip install -q --no-deps --force-reinstall "$build"/dist/faasd_py-*.whl
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  log "generating containerd API stubs into $site"
  "$PY" -m faasd_py.runtime.codegen --out "$site" 2>/dev/null
  "$PY" -c 'import faasd_py.runtime._api.api.services.tasks.v1.tasks_pb2_grpc' || die "generated stubs do not import"
}

persist_journal() {
  # journald keeps logs across reboots only when this directory exists (Storage=auto)
  if [ ! -d /var/log/journal ]; then
    mkdir -p /var/log/journal
    if command -v systemd-tmpfiles >/dev/null; then
      systemd-tmpfiles --create --prefix /var/log/journal 2>/dev/null || true
    fi
    log "created /var/log/journal (persistent journal)"
  fi
}

journald_binary() {
  local b
  for b in /lib/systemd/systemd-journald /usr/lib/systemd/systemd-journald; do
    [ -x "$b" ] && { echo "$b"; return 0; }
  done
  return 1
}

start_journald_direct() {
  local bin
  if pgrep -x systemd-journal >/dev/null; then return 0; fi
  bin=$(journald_binary) || { warn "systemd-journald not found: function logs will not be kept"; return 0; }
  log "starting journald ($bin) in background"
  setsid "$bin" >/dev/null 2>&1 </dev/null &
  echo $! > "$S_RUN_DIR/journald.pid"
  for _ in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
  journalctl --flush >/dev/null 2>&1 || true
}

# The core services' compose file and the NATS and Prometheus configs beside it: copied only when absent,
# so an operator's edits survive upgrades.
install_compose_files() {
  local dir
  dir=$(dirname "$S_COMPOSE_PATH")
  mkdir -p "$dir"
  if [ ! -e "$S_COMPOSE_PATH" ]; then
    install -m 0644 "$SRC/docker-compose.yaml" "$S_COMPOSE_PATH"
    log "wrote $S_COMPOSE_PATH"
  fi
  local f
  for f in prometheus.yml nats.conf; do
    if [ ! -e "$dir/$f" ]; then
      install -m 0644 "$SRC/$f" "$dir/$f"
      log "wrote $dir/$f"
    fi
  done
}

# nats and prometheus images from the host's packages (needs containerd); re-run after upgrades
build_core_images() {
  log "building the core service images (faasd-py core-images)"
  FAASD_PY_CONFIG=$CONFIG "$PREFIX/bin/faasd-py" core-images >/dev/null \
    || die "faasd-py core-images failed (see the error above)"
}

containerd_answers() { ctr -a "$S_CONTAINERD_SOCKET" version >/dev/null 2>&1; }

start_containerd_direct() {
  local cfg="$S_RUN_DIR/containerd.toml"
  if containerd_answers; then
    log "containerd answers on $S_CONTAINERD_SOCKET"
    return 0
  fi
  log "starting containerd in background (socket $S_CONTAINERD_SOCKET, log $CONTAINERD_LOG)"
  # the CRI plugin is for Kubernetes; faasd-py talks to containerd's own API
  containerd config default \
    | sed -e 's#^disabled_plugins = \[\]#disabled_plugins = ["io.containerd.grpc.v1.cri"]#' \
          -e "s#address = \"/run/containerd/containerd.sock\"#address = \"$S_CONTAINERD_SOCKET\"#" > "$cfg"
  mkdir -p "$(dirname "$S_CONTAINERD_SOCKET")" "$(dirname "$CONTAINERD_LOG")"
  setsid containerd --config "$cfg" >>"$CONTAINERD_LOG" 2>&1 </dev/null &
  echo $! > "$S_RUN_DIR/containerd.pid"
  for _ in $(seq 300); do containerd_answers && return 0; sleep 0.05; done
  tail -n 20 "$CONTAINERD_LOG" >&2 || true
  die "containerd did not answer on $S_CONTAINERD_SOCKET within 15 s (log: $CONTAINERD_LOG)"
}

start_daemon_direct() {
  local pidfile="$S_RUN_DIR/faasd-py.pid"
  if [ -f "$pidfile" ]; then
    log "stopping the running daemon (pid $(cat "$pidfile")) to upgrade it"
    stop_pidfile "$pidfile" 30
  fi
  mkdir -p "$(dirname "$LOG")"
  log "starting faasd-py in background (log $LOG)"
  FAASD_PY_CONFIG=$CONFIG setsid "$PREFIX/bin/faasd-py" up >>"$LOG" 2>&1 </dev/null &
  echo $! > "$pidfile"
}

start_systemd() {
  systemctl daemon-reload
  systemctl enable faasd-py.service >/dev/null 2>&1
  log "(re)starting faasd-py.service"
  systemctl restart faasd-py.service || {
    journalctl -u faasd-py.service -n 40 --no-pager >&2 || true
    die "faasd-py.service failed to start (journalctl -u faasd-py)"
  }
}

wait_healthy() {
  local url="$S_GATEWAY_URL/healthz" deadline=$(( $(date +%s) + TIMEOUT )) pid=""
  if [ "$MODE" = direct ]; then pid=$(cat "$S_RUN_DIR/faasd-py.pid"); fi
  log "waiting for $url"
  until "$PY" -c 'import sys, urllib.request; sys.exit(urllib.request.urlopen(sys.argv[1], timeout=2).status != 200)' \
      "$url" 2>/dev/null; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$LOG" >&2 || true
      die "faasd-py exited during start-up (log: $LOG)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      if [ -n "$pid" ]; then tail -n 40 "$LOG" >&2 || true; else journalctl -u faasd-py -n 40 --no-pager >&2 || true; fi
      die "faasd-py did not answer GET $url with 200 within ${TIMEOUT}s"
    fi
    sleep 0.2
  done
}

do_install() {
  check_os
  if [ "$SKIP_APT" = 0 ]; then apt_ensure "${RUNTIME_PACKAGES[@]}"; fi
  install_venv
  load_settings_env
  mkdir -p "$S_RUN_DIR"
  persist_journal
  local flag=--no-systemd
  if [ "$MODE" = systemd ]; then flag=--systemd; fi
  # same as `faasd-py install`, but also fine when the config file does not exist yet
  "$PY" -m faasd_py.install --config "$CONFIG" "$flag"
  load_settings_env  # the config file may have just been written
  install_compose_files
  if [ "$MODE" = systemd ]; then
    systemctl enable --now containerd.service
    build_core_images
    start_systemd
  else
    start_journald_direct
    start_containerd_direct
    build_core_images
    start_daemon_direct
  fi
  wait_healthy
  log "faasd-py is up at $S_GATEWAY_URL ($MODE mode)"
  echo
  echo "Log in with:"
  echo "  $S_LOGIN_COMMAND"
}

# ctr_remove NAMESPACE [FILTER]: kill and delete the tasks and containers (matching FILTER)
ctr_remove() {
  local c=(ctr -a "$S_CONTAINERD_SOCKET" -n "$1") t
  for t in $("${c[@]}" containers ls -q ${2:+"$2"}); do
    "${c[@]}" tasks kill -a -s SIGKILL "$t" >/dev/null 2>&1 || true
  done
  for t in $("${c[@]}" containers ls -q ${2:+"$2"}); do
    "${c[@]}" tasks delete -f "$t" >/dev/null 2>&1 || true
    "${c[@]}" containers delete "$t" >/dev/null 2>&1 || true
  done
}

# The core services (NATS, Prometheus) outlive the daemon by design: uninstall removes them.
remove_core_services() {
  local ns args=()
  if [ "$PURGE" = 1 ]; then args+=(--purge); fi
  # the daemon's own code removes them properly (CNI DEL, host names) when the CLI offers it
  if [ -x "$PREFIX/bin/faasd-py" ] && "$PREFIX/bin/faasd-py" --help 2>/dev/null | grep -qw uninstall; then
    FAASD_PY_CONFIG=$CONFIG "$PREFIX/bin/faasd-py" uninstall "${args[@]}" && return 0
    warn "faasd-py uninstall failed: removing the core services with ctr"
  fi
  containerd_answers || { warn "containerd does not answer: core services not removed"; return 0; }
  log "removing the core services (containerd namespace openfaas)"
  ctr_remove openfaas 'labels."io.faasd-py.core-service"'
  if [ -n "$S_CORE_NETNS_PREFIX" ]; then
    for ns in $(ip netns list | awk -v p="$S_CORE_NETNS_PREFIX" 'index($1, p) == 1 {print $1}'); do
      ip netns del "$ns"
    done
  fi
}

purge_functions() {
  local ns t
  containerd_answers || { warn "containerd does not answer: functions not removed"; return 0; }
  for ns in $(ctr -a "$S_CONTAINERD_SOCKET" namespaces ls 2>/dev/null \
                | awk 'NR > 1 && ($1 == "openfaas-fn" || $1 == "openfaas" || $2 ~ /(^|,)openfaas=/) {print $1}'); do
    log "removing functions in containerd namespace $ns"
    ctr_remove "$ns"
    for t in $(ctr -a "$S_CONTAINERD_SOCKET" -n "$ns" images ls -q); do
      ctr -a "$S_CONTAINERD_SOCKET" -n "$ns" images rm "$t" >/dev/null 2>&1 || true
    done
    ctr -a "$S_CONTAINERD_SOCKET" namespaces remove "$ns" >/dev/null 2>&1 || true
  done
  for ns in $(ip netns list | awk -v p="$S_NETNS_PREFIX" 'index($1, p) == 1 {print $1}'); do ip netns del "$ns"; done
  ip link del "$S_BRIDGE" 2>/dev/null || true
  rm -rf "$S_IPAM_DIR"
}

do_uninstall() {
  load_settings_env
  if [ -f "$UNIT" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    log "stopping and disabling faasd-py.service"
    systemctl disable --now faasd-py.service || true
  fi
  if [ -f "$UNIT" ]; then
    rm -f "$UNIT"
    if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
  fi
  if [ -f "$S_RUN_DIR/faasd-py.pid" ]; then
    log "stopping faasd-py (pid $(cat "$S_RUN_DIR/faasd-py.pid"))"
    stop_pidfile "$S_RUN_DIR/faasd-py.pid" 30
  fi
  remove_core_services
  if [ "$PURGE" = 1 ]; then purge_functions; fi
  # containerd and journald only if this script started them (functions keep running otherwise)
  stop_pidfile "$S_RUN_DIR/containerd.pid" 30
  stop_pidfile "$S_RUN_DIR/journald.pid" 10
  rm -f "$S_RUN_DIR/containerd.toml"
  rmdir "$S_RUN_DIR" 2>/dev/null || true
  log "removing $PREFIX"
  rm -rf "$PREFIX"
  if [ "$PURGE" = 1 ]; then
    log "purging $S_STATE_DIR (with the compose file), $CONFIG, logs"
    rm -rf "$S_STATE_DIR" "$S_RUN_DIR"
    rm -f "$CONFIG" "$LOG" "$CONTAINERD_LOG" /etc/sysctl.d/90-faasd-py.conf
    rmdir "$(dirname "$CONFIG")" 2>/dev/null || true
    log "faasd-py removed with all its data"
  else
    log "faasd-py removed; kept $CONFIG and $S_STATE_DIR (use --purge to remove them)"
  fi
}

if [ "$UNINSTALL" = 1 ]; then do_uninstall; else do_install; fi
