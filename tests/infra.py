"""Real infrastructure for integration tests: containerd, a local OCI registry and journald.

Everything lives under one scratch directory and is torn down by :meth:`TestEnv.down`, which
also removes what runs left behind (netns, bridge, iptables chains, cgroups), so a second run on
the same machine starts clean. Usable from pytest (see tests/conftest.py) and by hand:

    python -m tests.infra up   --dir /tmp/fdpy-env     # prints the env as JSON
    python -m tests.infra down --dir /tmp/fdpy-env
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REQUIRED_BINARIES = ("containerd", "runc", "ctr", "docker-registry", "iptables", "ip")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root"
    for b in REQUIRED_BINARIES:
        if not shutil.which(b):
            return f"{b} is not installed"
    if not Path("/sys/fs/cgroup/freezer").is_dir():
        return "no cgroup v1 freezer"
    if not Path("/usr/lib/cni/bridge").exists() and not Path("/opt/cni/bin/bridge").exists():
        return "CNI plugins are not installed"
    return None


def _wait_for(check: object, what: str, timeout: float = 15.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


def _http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=1) as r:
        return bool(r.status == 200)


@dataclass
class TestEnv:
    dir: str
    containerd_socket: str = ""
    registry: str = ""  # host:port of the plain-HTTP registry on loopback
    journald: bool = False
    bridge: str = "fdpyt0"
    subnet: str = "10.88.0.0/16"
    netns_prefix: str = "fdpyt-"

    @property
    def path(self) -> Path:
        return Path(self.dir)

    # --- start -------------------------------------------------------------------------------

    def up(self) -> TestEnv:
        self.path.mkdir(parents=True, exist_ok=True)
        self.down(quiet=True)  # whatever a crashed earlier run left
        self.path.mkdir(parents=True, exist_ok=True)
        self._start_containerd()
        self._start_registry()
        self._start_journald()
        (self.path / "env.json").write_text(json.dumps(asdict(self)))
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.path / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        (self.path / f"{name}.pid").write_text(str(proc.pid))

    def _start_containerd(self) -> None:
        base = self.path / "containerd"
        for d in ("root", "state", "opt"):
            (base / d).mkdir(parents=True, exist_ok=True)
        default = subprocess.run(["containerd", "config", "default"], capture_output=True, text=True,
                                 check=True).stdout
        sock = base / "containerd.sock"
        cfg = (
            default.replace("disabled_plugins = []", 'disabled_plugins = ["io.containerd.grpc.v1.cri"]')
            .replace('root = "/var/lib/containerd"', f'root = "{base}/root"')
            .replace('state = "/run/containerd"', f'state = "{base}/state"')
            .replace('address = "/run/containerd/containerd.sock"', f'address = "{sock}"')
            .replace('path = "/opt/containerd"', f'path = "{base}/opt"')
        )
        (base / "config.toml").write_text(cfg)
        self._spawn("containerd", ["containerd", "--config", str(base / "config.toml")])
        self.containerd_socket = str(sock)
        _wait_for(lambda: subprocess.run(["ctr", "-a", str(sock), "version"], capture_output=True).returncode == 0,
                  "containerd")

    def _start_registry(self) -> None:
        port = free_port()
        base = self.path / "registry"
        (base / "data").mkdir(parents=True, exist_ok=True)
        (base / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {base}/data\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{port}\n"
        )
        self._spawn("registry", ["docker-registry", "serve", str(base / "config.yml")])
        self.registry = f"127.0.0.1:{port}"
        _wait_for(lambda: _http_ok(f"http://{self.registry}/v2/"), "registry")

    def _start_journald(self) -> None:
        """A standalone journald in the root mount namespace, unless one already runs."""
        if Path("/run/systemd/journal/socket").is_socket() and self._journald_alive():
            self.journald = True
            return
        binary = Path("/lib/systemd/systemd-journald")
        if not binary.exists():
            return
        self._spawn("journald", [str(binary)])
        _wait_for(lambda: Path("/run/systemd/journal/socket").is_socket(), "journald")
        self.journald = True

    @staticmethod
    def _journald_alive() -> bool:
        out = subprocess.run(["pgrep", "-x", "systemd-journal"], capture_output=True)
        return out.returncode == 0

    # --- stop --------------------------------------------------------------------------------

    def down(self, quiet: bool = False) -> None:
        sock = self.containerd_socket or str(self.path / "containerd" / "containerd.sock")
        if Path(sock).exists():
            self._remove_all_containers(sock)
        self._remove_netns()
        pids = []
        for name in ("journald", "registry", "containerd"):
            pidfile = self.path / f"{name}.pid"
            if pidfile.exists():
                with contextlib.suppress(ValueError, ProcessLookupError):
                    pid = int(pidfile.read_text())
                    os.kill(pid, signal.SIGTERM)
                    pids.append(pid)
                pidfile.unlink()
        deadline = time.monotonic() + 10
        for pid in pids:
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._remove_bridge_and_rules()
        self._remove_cgroups()
        # unmount anything left under our dir (overlay rootfs of crashed tasks), then delete it
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            mnt = line.split()[1]
            if mnt.startswith(str(self.path) + "/"):
                subprocess.run(["umount", "-l", mnt], capture_output=True)
        if self.journald and not quiet:
            pass
        shutil.rmtree(self.path, ignore_errors=True)

    def _remove_all_containers(self, sock: str) -> None:
        def ctr(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["ctr", "-a", sock, *args], capture_output=True, text=True, timeout=30)

        try:
            namespaces = ctr("namespaces", "ls", "-q").stdout.split()
        except subprocess.TimeoutExpired:
            return
        for ns in namespaces:
            for t in ctr("-n", ns, "tasks", "ls", "-q").stdout.split():
                ctr("-n", ns, "tasks", "kill", "-a", "-s", "SIGKILL", t)
            for t in ctr("-n", ns, "tasks", "ls", "-q").stdout.split():
                ctr("-n", ns, "tasks", "delete", "-f", t)
            for c in ctr("-n", ns, "containers", "ls", "-q").stdout.split():
                ctr("-n", ns, "containers", "delete", c)
            for d in (f"/run/containerd/runc/{ns}",):
                with contextlib.suppress(OSError):
                    Path(d).rmdir()

    def _remove_netns(self) -> None:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(self.netns_prefix):
                subprocess.run(["ip", "netns", "del", name], capture_output=True)

    def _remove_bridge_and_rules(self) -> None:
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        # bridge ipMasq leaves per-container CNI-<hash> nat chains when DEL never ran
        rules = subprocess.run(["iptables", "-t", "nat", "-S", "POSTROUTING"], capture_output=True,
                               text=True).stdout
        for rule in rules.splitlines():
            if self.subnet.split("/")[0].rsplit(".", 2)[0] in rule and "CNI-" in rule:
                parts = rule.split()
                subprocess.run(["iptables", "-t", "nat", *(["-D", *parts[1:]])], capture_output=True)
                chain = parts[parts.index("-j") + 1] if "-j" in parts else ""
                if chain.startswith("CNI-"):
                    subprocess.run(["iptables", "-t", "nat", "-F", chain], capture_output=True)
                    subprocess.run(["iptables", "-t", "nat", "-X", chain], capture_output=True)

    def _remove_cgroups(self) -> None:
        for ctl in Path("/sys/fs/cgroup").iterdir():
            for ns in ("openfaas-fn", "faasd-py-test"):
                d = ctl / ns
                if d.is_dir():
                    for child in sorted(d.rglob("*"), reverse=True):
                        if child.is_dir():
                            with contextlib.suppress(OSError):
                                child.rmdir()
                    with contextlib.suppress(OSError):
                        d.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description="start/stop the real test infrastructure")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", default="/tmp/fdpy-env")
    ns = parser.parse_args()
    if ns.action == "up":
        why = missing_prerequisite()
        if why:
            raise SystemExit(why)
        env = TestEnv(dir=ns.dir).up()
        print(json.dumps(asdict(env), indent=2))
    else:
        saved = Path(ns.dir) / "env.json"
        env = TestEnv(**json.loads(saved.read_text())) if saved.exists() else TestEnv(dir=ns.dir)
        env.down()


if __name__ == "__main__":
    main()
