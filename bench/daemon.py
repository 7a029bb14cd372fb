"""The daemon under test as a separate process (``python -m faasd_py --config FILE up``), and the
few gateway calls the benchmark makes.

A separate process, not the in-process harness of the integration tests: its CPU time and RSS
must be the daemon's alone, and the client's work must not share its event loop.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.infra import TestEnv, free_port

NAMESPACE = "openfaas-fn"
NETWORK = "openfaas-cni-bridge"


def config_for(env: TestEnv, state: Path, pull_policy: str) -> dict[str, Any]:
    """Production defaults, except what keeps every file, port, netns and address inside ``env``."""
    return {
        "state_dir": str(state / "state"),
        "run_dir": str(state / "run"),
        "containerd_socket": env.containerd_socket,
        "host": "127.0.0.1",
        "port": free_port(),
        "metrics_port": free_port(),
        "journald": env.journald,
        "registry": {"insecure": [env.registry], "pull_policy": pull_policy},
        "network": {
            "bridge": env.bridge,
            "subnet": env.subnet,
            "netns_prefix": env.netns_prefix,
            "ipam_dir": str(state / "ipam"),
            "nameservers": ["127.0.0.1"],  # functions resolve nothing outside
        },
    }


class Reply:
    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> Reply:
    conn.request(method, path, body, headers or {})
    resp = conn.getresponse()
    return Reply(resp.status, resp.read())


class DaemonProcess:
    """Starts ``faasd-py up`` with a config file and knows its pid, URL and admin credentials."""

    def __init__(self, env: TestEnv, state: Path, pull_policy: str = "Always") -> None:
        self.env = env
        self.state = state
        self.config = config_for(env, state, pull_policy)
        self.port: int = self.config["port"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state / "daemon.log"
        self._auth: dict[str, str] = {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_helper_pid(self) -> int | None:
        """The daemon's log helper (``faasd-py-logs``, its child): its CPU and memory are the daemon's too."""
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                status = (proc / "status").read_text()
                argv = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            parent = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:")), "")
            if parent == str(self.pid) and b"faasd_py.provider.log_helper" in argv:
                return int(proc.name)
        return None

    @property
    def command(self) -> str:
        return f"{sys.executable} -m faasd_py --config {self.state / 'config.yaml'} up"

    def start(self, timeout: float = 60.0) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        cfg = self.state / "config.yaml"
        cfg.write_text(yaml.safe_dump(self.config))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "faasd_py", "--config", str(cfg), "up"],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                                         cwd=Path(__file__).resolve().parent.parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if request(self.connect(1.0), "GET", "/healthz").status == 200:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"daemon did not answer /healthz 200 within {timeout:g}s:\n{self.log_tail()}")
        password = Path(self.config["state_dir"], "secrets", "basic-auth-password").read_text().strip()
        self._auth = {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM as systemd would; SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def connect(self, timeout: float = 30.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    # --- the gateway calls faas-cli makes ------------------------------------------------------

    def deploy(self, conn: http.client.HTTPConnection, name: str, image: str,
               env: dict[str, str] | None = None) -> Reply:
        body = json.dumps({"service": name, "image": image, "namespace": NAMESPACE, "labels": {},
                           "annotations": {}, "envVars": env or {}}).encode()
        return request(conn, "POST", "/system/functions", body, {**self._auth, "Content-Type": "application/json"})

    def delete(self, conn: http.client.HTTPConnection, name: str) -> Reply:
        body = json.dumps({"functionName": name, "namespace": NAMESPACE}).encode()
        return request(conn, "DELETE", "/system/functions", body, {**self._auth, "Content-Type": "application/json"})

    def functions(self) -> list[str]:
        reply = request(self.connect(), "GET", f"/system/functions?namespace={NAMESPACE}", None, self._auth)
        if reply.status != 200:
            return []
        return [f["name"] for f in json.loads(reply.body)]

    # --- where the function's replicas are -----------------------------------------------------

    def netns_of(self, name: str) -> list[str]:
        """The function's network namespaces (``<prefix><namespace>-<name>-<8 hex>``)."""
        prefix = f"{self.env.netns_prefix}{NAMESPACE}-{name}-"
        try:
            return [n for n in os.listdir("/run/netns") if n.startswith(prefix) and len(n) == len(prefix) + 8]
        except FileNotFoundError:
            return []

    def address_of(self, name: str) -> str:
        """The replica's IP from host-local's IPAM files (``<ip>`` holding ``<owner>\\r\\n<ifname>``)."""
        owners = set(self.netns_of(name))
        ipam = Path(self.config["network"]["ipam_dir"]) / NETWORK
        found = []
        for entry in ipam.iterdir():
            with contextlib.suppress(ValueError, OSError, IndexError):
                ipaddress.ip_address(entry.name)  # the others are host-local's lock and last_reserved_ip
                if entry.read_text().splitlines()[0].strip() in owners:
                    found.append(entry.name)
        if len(found) != 1:
            raise RuntimeError(f"expected one address for {name} in {ipam}, found {found} (netns {sorted(owners)})")
        return found[0]
