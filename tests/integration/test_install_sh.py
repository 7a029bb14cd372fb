"""install.sh end to end, without systemd (as on this VM and in CI): install, upgrade, uninstall, purge.

Everything the script would put under /opt, /etc, /var and /run goes to a temporary directory
instead (--prefix, --config, --log and the settings it persists), and the daemon talks to the
session's containerd, so the host keeps no trace except the ip_forward sysctl drop-in, which
--purge removes. It builds a real venv with pip, so it takes a minute.
"""

from __future__ import annotations

import base64
import os
import signal
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra import TestEnv

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (REPO / "faasd_py" / "daemon.py").exists(), reason="faasd_py/daemon.py is not written yet"),
]


def status(url: str, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0  # nothing listens


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Installer:
    def __init__(self, root: Path, env: TestEnv) -> None:
        self.root = root
        self.prefix = root / "opt"
        self.config = root / "etc" / "config.yaml"
        self.log = root / "log" / "faasd-py.log"
        self.settings = env.settings()
        s = self.settings
        # only on the first run: install persists them into the config file for later runs
        self.first_env = {
            "FAASD_PY_STATE_DIR": str(root / "state"),
            "FAASD_PY_RUN_DIR": str(root / "run"),
            "FAASD_PY_CONTAINERD_SOCKET": s.containerd_socket,
            "FAASD_PY_HOST": s.host,
            "FAASD_PY_PORT": str(s.port),
            "FAASD_PY_METRICS_PORT": str(s.metrics_port),
            "FAASD_PY_NETWORK__BRIDGE": s.network.bridge,
            "FAASD_PY_NETWORK__SUBNET": s.network.subnet,
            "FAASD_PY_NETWORK__NETNS_PREFIX": s.network.netns_prefix,
            "FAASD_PY_NETWORK__IPAM_DIR": str(root / "ipam"),
            "FAASD_PY_REGISTRY__INSECURE": env.registry,
            # no core services here: they would publish fixed loopback ports (4222, 9090)
            "FAASD_PY_COMPOSE_FILE": str(root / "compose" / "docker-compose.yaml"),
        }
        self.compose = root / "compose" / "docker-compose.yaml"
        self.url = f"http://127.0.0.1:{s.port}"
        self.state = root / "state"
        self.pidfile = root / "run" / "faasd-py.pid"

    def run(self, *args: str, first: bool = False) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAASD_PY_")}
        if first:
            env.update(self.first_env)
        argv = ["bash", str(REPO / "install.sh"), "--no-systemd", "--prefix", str(self.prefix),
                "--config", str(self.config), "--log", str(self.log), "--timeout", "90", *args]
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=900)
        assert proc.returncode == 0, f"install.sh {args} failed:\n{proc.stdout}\n{proc.stderr}\n{self.daemon_log()}"
        return proc

    def daemon_log(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else "(no daemon log)"

    def pid(self) -> int:
        return int(self.pidfile.read_text())

    def password(self) -> str:
        return (self.state / "secrets" / "basic-auth-password").read_text()


@pytest.fixture
def installer(testenv: TestEnv, tmp_path: Path) -> Iterator[Installer]:
    inst = Installer(tmp_path, testenv)
    try:
        yield inst
    finally:
        # whatever happened, leave no daemon behind (it is ours: install.sh started it for us)
        if inst.pidfile.exists():
            pid = int(inst.pidfile.read_text())
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if inst.prefix.exists() or inst.state.exists():
            subprocess.run(["bash", str(REPO / "install.sh"), "--no-systemd", "--prefix", str(inst.prefix),
                            "--config", str(inst.config), "--log", str(inst.log), "--uninstall", "--purge"],
                           capture_output=True, timeout=120)


def test_install_upgrade_uninstall_purge(installer: Installer) -> None:
    inst = installer
    inst.compose.parent.mkdir()
    inst.compose.write_text("services: {}  # mine\n")
    t0 = time.monotonic()
    first = inst.run(first=True)
    took_first = time.monotonic() - t0

    # installed from a built wheel (not editable), with stubs, answering, logged in with the generated password
    assert f"faas-cli login -g {inst.url} -u admin --password-stdin" in first.stdout
    located = subprocess.run([str(inst.prefix / "bin" / "python"), "-c",
                              "import faasd_py, faasd_py.runtime._api.api.services.tasks.v1.tasks_pb2_grpc as t;"
                              "print(faasd_py.__file__)"], capture_output=True, text=True, check=True, cwd="/")
    assert located.stdout.startswith(str(inst.prefix))
    assert status(f"{inst.url}/healthz") == 200
    password = inst.password()
    assert len(password) >= 32
    assert stat.S_IMODE((inst.state / "secrets" / "basic-auth-password").stat().st_mode) == 0o600
    assert status(f"{inst.url}/system/functions", ("admin", password)) == 200, inst.daemon_log()
    assert status(f"{inst.url}/system/functions", ("admin", "wrong")) == 401
    assert not (inst.root / "run" / "containerd.pid").exists()  # the session's containerd answered
    # an existing compose file is kept; the Prometheus config is installed beside it
    assert inst.compose.read_text() == "services: {}  # mine\n"
    assert (inst.compose.parent / "prometheus.yml").read_text() == (REPO / "prometheus.yml").read_text()
    assert (inst.compose.parent / "nats.conf").read_text() == (REPO / "nats.conf").read_text()
    assert stat.S_IMODE((inst.state / "secrets" / "nats-token").stat().st_mode) == 0o600
    assert len((inst.state / "secrets" / "nats-token").read_text()) >= 32
    images = subprocess.run(["ctr", "-a", inst.settings.containerd_socket, "-n", "openfaas", "images", "ls", "-q"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert {"localhost/faasd-py/nats:latest", "localhost/faasd-py/prometheus:latest"} <= set(images)
    config = inst.config.read_text()
    assert f"\nport: {inst.settings.port}\n" in config and f"\nstate_dir: {inst.state}\n" in config
    pid1 = inst.pid()
    assert alive(pid1)

    # a re-run upgrades in place: same password, the operator's config edit survives, daemon restarted
    inst.config.write_text(config + "log_level: debug  # local edit\n")
    t0 = time.monotonic()
    second = inst.run()  # no FAASD_PY_* env this time: everything must come from the config file
    took_second = time.monotonic() - t0
    assert "apt: all" in second.stderr  # nothing missing, so no apt-get at all
    assert inst.password() == password
    assert inst.config.read_text().endswith("log_level: debug  # local edit\n")
    pid2 = inst.pid()
    assert pid2 != pid1 and alive(pid2) and not alive(pid1)
    assert status(f"{inst.url}/system/functions", ("admin", password)) == 200, inst.daemon_log()
    print(f"install.sh: first run {took_first:.1f}s, re-run {took_second:.1f}s")

    # uninstall: service gone, data and config kept
    inst.run("--uninstall")
    assert not alive(pid2) and status(f"{inst.url}/healthz") == 0
    assert not inst.prefix.exists()
    assert inst.password() == password and inst.config.exists()

    # purge: nothing left
    inst.run("--uninstall", "--purge")
    assert not inst.state.exists() and not inst.config.exists() and not inst.log.exists()
