#!/bin/bash
# THE test command (also what CI runs, via .ci/run). As root, from a checkout:
#
#   sudo ./scripts/test.sh [pytest args...]
#
# On a fresh Debian 12 machine it installs what the tests need (the same distro packages as
# install.sh plus a registry, skopeo, wrk and shellcheck), creates .venv, installs the project
# editable with its test extras and generates the containerd stubs into the source tree. Every
# one of those steps is skipped when already done, so re-runs only lint and test.
# Then: shellcheck, ruff, mypy, pytest (unit + integration against real containerd/runc/CNI/registry).
# Exits non-zero if any of them fails; all of them run even after a failure, to report everything.
#
# Env: TEST_SKIP_SETUP=1 skips the apt/venv/stub checks; CI=true makes missing integration
# prerequisites a failure instead of a skip.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
need_root

VENV=$ROOT/.venv
PY=$VENV/bin/python
STAMP=$VENV/.faasd-py-test-deps

setup() {
  apt_ensure "${RUNTIME_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
  if [ -e "$PY" ] && ! "$PY" -c 'import sys' 2>/dev/null; then
    log "$VENV is broken: recreating"
    rm -rf "$VENV"
  fi
  if [ ! -x "$PY" ]; then
    log "creating $VENV"
    "$(ensure_python)" -m venv "$VENV"
  fi
  # reinstall only when the dependency list changed or the editable install is not this checkout
  local want have
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  have=$(cat "$STAMP" 2>/dev/null || true)
  if [ "$want" != "$have" ] || [ ! -x "$VENV/bin/ruff" ] || [ ! -x "$VENV/bin/mypy" ] ||
     [ "$("$PY" -c 'import faasd_py, os; print(os.path.dirname(os.path.dirname(faasd_py.__file__)))' 2>/dev/null)" != "$ROOT" ]; then
    log "pip install -e .[test]"
    "$PY" -m pip install -q -e '.[test]'
    echo "$want" > "$STAMP"
  else
    log "pip: .venv is up to date, skipping"
  fi
  # the stubs must match this venv's protobuf/grpcio: importing them runs their version checks
  if "$PY" -c 'import faasd_py.runtime._api.api.services.tasks.v1.tasks_pb2_grpc' 2>/dev/null; then
    log "containerd stubs present"
  else
    log "generating containerd stubs into the source tree"
    "$PY" -m faasd_py.runtime.codegen
  fi
}

FAILED=()
step() {  # step NAME CMD...: run, time and record a failure without stopping
  local name=$1 t0 rc
  shift
  t0=$(date +%s)
  log "$name"
  "$@"
  rc=$?
  log "$name: $([ $rc = 0 ] && echo ok || echo "FAILED (exit $rc)") in $(( $(date +%s) - t0 ))s"
  [ $rc = 0 ] || FAILED+=("$name")
}

if [ "${TEST_SKIP_SETUP:-0}" != 1 ]; then
  # a subshell with set -e (not part of a || list, which would disable it): any failing setup command stops it
  (set -e; setup)
  setup_rc=$?
  [ "$setup_rc" = 0 ] || die "setup failed (exit $setup_rc)"
fi

step shellcheck shellcheck -x install.sh scripts/*.sh .ci/run
step ruff "$VENV/bin/ruff" check .
step mypy "$VENV/bin/mypy" faasd_py
# pytest exits 5 when it ran no test: that is a failure here too, like any non-zero exit
step pytest "$PY" -m pytest -ra --durations=15 "$@"

if [ ${#FAILED[@]} -gt 0 ]; then
  log "FAILED: ${FAILED[*]}"
  exit 1
fi
log "all checks passed"
