#!/bin/bash
# The README's install command, run exactly as written, then used the way its faas-cli section
# does (login, deploy, list, invoke, remove) and uninstalled with --purge. CI runs this after the
# tests (.ci/run) on its throw-away machine. It installs into the real /opt, /etc and /var/lib and
# listens on :8080, so do not run it on a machine whose faasd-py you care about.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
GW=http://127.0.0.1:8080
WORK=$(mktemp -d /tmp/faasd-py-smoke.XXXXXX)
log() { printf '==> [smoke] %s\n' "$*"; }
cleanup() {
  local rc=$?
  log "uninstalling (--purge)"
  ./install.sh --uninstall --purge >"$WORK/uninstall.log" 2>&1 || { cat "$WORK/uninstall.log"; rc=1; }
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

log "sudo ./install.sh"
./install.sh >"$WORK/install.log" 2>&1 || { cat "$WORK/install.log"; exit 1; }
grep -q "faas-cli login" "$WORK/install.log" || { echo "install.sh printed no login line"; exit 1; }

PASS=$(cat /var/lib/faasd-py/secrets/basic-auth-password)
auth=(-u "admin:$PASS")
[ "$(curl -s -o /dev/null -w '%{http_code}' "$GW/system/functions")" = 401 ] || { echo "/system is open"; exit 1; }
[ "$(curl -s "${auth[@]}" "$GW/system/functions")" = "[]" ] || { echo "login (GET /system/functions) failed"; exit 1; }

log "faasd-py new + build (no Docker, no registry), then deploy as faas-cli does"
(cd "$WORK" && /opt/faasd-py/bin/faasd-py new hello --lang python3 --prefix localhost/ >/dev/null &&
  /opt/faasd-py/bin/faasd-py build -f hello.yml >"$WORK/build.log" 2>&1) || { cat "$WORK/build.log"; exit 1; }
body='{"service":"hello","image":"localhost/hello:latest","labels":{},"annotations":{}}'
code=$(curl -s -o /dev/null -w '%{http_code}' "${auth[@]}" -X PUT -H 'Content-Type: application/json' \
  -d "$body" "$GW/system/functions")
[ "$code" = 404 ] || { echo "PUT of a new function gave $code, faas-cli needs 404"; exit 1; }
code=$(curl -s -o "$WORK/deploy.out" -w '%{http_code}' "${auth[@]}" -X POST -H 'Content-Type: application/json' \
  -d "$body" "$GW/system/functions")
[ "$code" = 202 ] || { echo "deploy gave $code: $(cat "$WORK/deploy.out")"; exit 1; }
curl -fsS "${auth[@]}" "$GW/system/functions" | grep -q '"availableReplicas": *1' || { echo "not ready"; exit 1; }

log "invoke"
out=$(curl -fsS -d 'smoke test' "$GW/function/hello.openfaas-fn")
[ -n "$out" ] || { echo "empty reply from the function"; exit 1; }
log "reply: $out"

log "remove"
code=$(curl -s -o /dev/null -w '%{http_code}' "${auth[@]}" -X DELETE -H 'Content-Type: application/json' \
  -d '{"functionName":"hello","namespace":"openfaas-fn"}' "$GW/system/functions")
[ "$code" = 202 ] || { echo "remove gave $code"; exit 1; }
log "ok"
