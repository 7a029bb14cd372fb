# Shared by install.sh and scripts/test.sh (sourced, not executed).
# shellcheck shell=bash

# shellcheck disable=SC2034  # the package lists are used by the scripts that source this file
# What the appliance needs on the host. One list, so install.sh and the test command agree.
RUNTIME_PACKAGES=(
  containerd runc containernetworking-plugins iptables iproute2
  # nft: the table that keeps namespaces' functions apart on the bridge (network.isolate_namespaces)
  nftables
  # containerd's .proto files: faasd-py generates its gRPC stubs from them at install time
  golang-github-containerd-containerd-dev golang-github-gogo-protobuf-dev golang-github-gogo-googleapis-dev
  # the venv, and systemd-python (built from source against libsystemd); python3-yaml lets
  # install.sh --uninstall read the config with the system python once the venv is gone
  python3-venv python3-dev python3-yaml gcc pkg-config libsystemd-dev
  # journald (function logs) and its tools
  systemd ca-certificates
  # the core services' images are built from these (faasd-py core-images), no registry needed
  nats-server prometheus
)
# Extra tools the tests and benchmarks use: a local OCI registry, image copying, HTTP load.
TEST_PACKAGES=(docker-registry skopeo wrk curl shellcheck)

_t0_ms() { date +%s%3N; }
SCRIPT_T0=$(_t0_ms)

log() { printf '==> [%5.1fs] %s\n' "$(( $(_t0_ms) - SCRIPT_T0 ))e-3" "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (sudo $0)"; }

# missing_packages PKG... -> prints the ones dpkg does not have installed
missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${db:Status-Status}\n' "$p" 2>/dev/null | grep -qx installed || echo "$p"
  done
}

# apt_ensure PKG...: installs what is missing; does nothing (not even apt-get update) when all
# are present, so re-runs are fast and work offline.
apt_ensure() {
  local missing
  mapfile -t missing < <(missing_packages "$@")
  if [ "${#missing[@]}" -eq 0 ]; then
    log "apt: all ${#} packages present, skipping"
    return 0
  fi
  log "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 -qq update || warn "apt-get update failed; trying the local package lists"
  apt-get -o DPkg::Lock::Timeout=900 -y -qq --no-install-recommends install "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

# python_for_venv: prints a system interpreter >= 3.11 (Ubuntu 22.04's python3 is 3.10)
python_for_venv() {
  local py
  for py in /usr/bin/python3 /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.11; do
    if [ -x "$py" ] && "$py" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"
      return 0
    fi
  done
  return 1
}

# ensure_python: like python_for_venv, installing python3.11 from apt when no suitable one exists
ensure_python() {
  python_for_venv && return 0
  log "no python >= 3.11 with venv found; installing python3.11"
  apt_ensure python3.11 python3.11-venv python3.11-dev
  python_for_venv || die "no python >= 3.11 available (faasd-py needs 3.11+)"
}

# wait_pid_exit PID TIMEOUT_S: SIGTERM was sent; SIGKILL if it is still alive after the timeout
wait_pid_exit() {
  local pid=$1 deadline=$(( $(date +%s) + $2 ))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      warn "pid $pid did not exit after SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      return 0
    fi
    sleep 0.1
  done
}

# stop_pidfile FILE [TIMEOUT_S]: stop the process a pidfile names (only that pid), remove the file
stop_pidfile() {
  local file=$1 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file" 2>/dev/null || true)
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait_pid_exit "$pid" "${2:-30}"
  fi
  rm -f "$file"
}
