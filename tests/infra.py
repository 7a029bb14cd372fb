"""Real infrastructure for integration tests: containerd, a local OCI registry and journald.

Everything lives under one scratch directory and is torn down by :meth:`TestEnv.down`, which
also removes what runs left behind (netns, bridge, iptables rules of the test subnet, cgroups,
runc state dirs), so a second run on the same machine starts clean; :meth:`TestEnv.leaks` says
what is still there. Cleanup deliberately does not reuse faasd_py code: it must work even when
the code under test is broken. Usable from pytest (see tests/conftest.py) and by hand:

    python -m tests.infra up   --dir /tmp/fdpy-env     # prints the env as JSON
    python -m tests.infra down --dir /tmp/fdpy-env
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from faasd_py.config import Settings
from faasd_py.network.tenant_firewall import table_name

REQUIRED_BINARIES = ("containerd", "runc", "ctr", "docker-registry", "iptables", "ip")
# containerd namespaces whose cgroup parents / runc dirs are removed even if containerd died early
DEFAULT_NAMESPACES = ("openfaas-fn", "faasd-py-test")
JOURNALD = Path("/lib/systemd/systemd-journald")
JOURNALD_PATHS = (Path("/run/systemd/journal"), Path("/run/log/journal"))
# There can be only one journald (it owns /run/systemd/journal/socket), so TestEnvs running side
# by side share the one a TestEnv started: each registers here, and the last one out stops it.
JOURNALD_SHARE = Path("/run/fdpy-test-journald")
# Popen objects of the services we started: kept so they are reaped with poll() (a collected
# Popen of a running child warns, and an unreaped child lingers as a zombie)
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 15.0) -> None:
    """Until something accepts on 127.0.0.1:``port``; RuntimeError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


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


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
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


def _run(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


@dataclass
class TestEnv:
    __test__ = False  # not a pytest test class despite the name

    dir: str
    containerd_socket: str = ""
    registry: str = ""  # host:port of the plain-HTTP registry on loopback
    journald: bool = False  # a journald serves /run/systemd/journal/socket (registered in JOURNALD_SHARE)
    bridge: str = "fdpyt0"
    subnet: str = "10.88.0.0/16"
    netns_prefix: str = "fdpyt-"
    pids: dict[str, int] = field(default_factory=dict)  # what up() started, by name

    @property
    def path(self) -> Path:
        return Path(self.dir)

    def settings(self) -> Settings:
        """Daemon settings that keep every file, port, netns and address inside this env."""
        s = Settings(
            state_dir=self.path / "state",
            run_dir=self.path / "run",
            containerd_socket=self.containerd_socket,
            host="127.0.0.1",
            port=free_port(),
            metrics_port=free_port(),
            journald=self.journald,
        )
        s.network.bridge = self.bridge
        s.network.subnet = self.subnet
        s.network.netns_prefix = self.netns_prefix
        s.network.ipam_dir = str(self.path / "ipam")
        s.registry.insecure = [self.registry]
        return s

    # --- start -------------------------------------------------------------------------------

    def up(self) -> TestEnv:
        self.path.mkdir(parents=True, exist_ok=True)
        self.down()  # whatever a crashed earlier run left
        self.path.mkdir(parents=True, exist_ok=True)
        self._start_containerd()
        self._start_registry()
        self._start_journald()
        self.save()
        return self

    def save(self) -> None:
        (self.path / "env.json").write_text(json.dumps(asdict(self)))

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.path / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        _CHILDREN[proc.pid] = proc
        (self.path / f"{name}.pid").write_text(str(proc.pid))
        self.pids[name] = proc.pid

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
        _wait_for(lambda: _run("ctr", "-a", str(sock), "version").returncode == 0, "containerd")

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
        """A standalone journald in the root mount namespace (so containerd's shims can log too),
        unless one already runs."""
        with _journald_share() as share:
            if not _journald_running():
                if not JOURNALD.exists():
                    return
                created = [str(p) for p in JOURNALD_PATHS if not p.exists()]
                with open(share / "journald.log", "ab") as log:
                    proc = subprocess.Popen([str(JOURNALD)], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
                _CHILDREN[proc.pid] = proc
                (share / "journald.json").write_text(json.dumps({"pid": proc.pid, "created": created}))
                _wait_for(lambda: Path("/run/systemd/journal/socket").is_socket(), "journald")
            (share / "users" / _user_key(self.dir)).write_text(f"{os.getpid()}\n{self.dir}")
            self.journald = True

    def _release_journald(self) -> None:
        """Unregister; stop the shared journald when it was a TestEnv's and nobody uses it any more."""
        if not JOURNALD_SHARE.exists():
            return
        with _journald_share() as share:
            (share / "users" / _user_key(self.dir)).unlink(missing_ok=True)
            for user in (share / "users").iterdir():  # sessions that died without down()
                with contextlib.suppress(ValueError, OSError):
                    pid, env_dir = user.read_text().split("\n", 1)
                    if not _alive(int(pid)) and not Path(env_dir).exists():
                        user.unlink()
            started = share / "journald.json"
            if any((share / "users").iterdir()) or not started.exists():
                return
            info = json.loads(started.read_text())
            if _alive(info["pid"]) and "journald" in _cmdline(info["pid"]):
                os.kill(info["pid"], signal.SIGTERM)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and _alive(info["pid"]):
                    time.sleep(0.05)
                if _alive(info["pid"]):
                    os.kill(info["pid"], signal.SIGKILL)
            for p in info["created"]:
                shutil.rmtree(p, ignore_errors=True)
            started.unlink()

    # --- stop --------------------------------------------------------------------------------

    def down(self) -> None:
        """Remove everything this env (or a crashed run with the same dir/prefix/subnet) made."""
        sock = self.containerd_socket or str(self.path / "containerd" / "containerd.sock")
        namespaces = set(DEFAULT_NAMESPACES)
        if Path(sock).exists():
            namespaces |= self._remove_all_containers(sock)
        self._kill_strays()
        self._remove_netns()
        self._stop_services()
        self._release_journald()
        self._kill_strays()  # shims whose containerd is gone only now
        self._remove_bridge_and_rules()
        self._remove_runtime_leftovers(namespaces)
        # unmount anything left under our dir (overlay rootfs of crashed tasks), then delete it
        for mnt in reversed(self._mounts()):
            _run("umount", "-l", mnt)
        shutil.rmtree(self.path, ignore_errors=True)

    def _remove_all_containers(self, sock: str) -> set[str]:
        def ctr(*args: str) -> subprocess.CompletedProcess[str]:
            return _run("ctr", "-a", sock, *args)

        try:
            namespaces = ctr("namespaces", "ls", "-q").stdout.split()
            for ns in namespaces:
                for t in ctr("-n", ns, "tasks", "ls", "-q").stdout.split():
                    ctr("-n", ns, "tasks", "kill", "-a", "-s", "SIGKILL", t)
                for t in ctr("-n", ns, "tasks", "ls", "-q").stdout.split():
                    ctr("-n", ns, "tasks", "delete", "-f", t)
                for c in ctr("-n", ns, "containers", "ls", "-q").stdout.split():
                    ctr("-n", ns, "containers", "delete", c)
        except subprocess.TimeoutExpired:
            return set()
        return set(namespaces)

    def _stop_services(self) -> None:
        pids = dict(self.pids)
        for name in ("registry", "containerd"):
            pidfile = self.path / f"{name}.pid"
            with contextlib.suppress(OSError, ValueError):
                pids[name] = int(pidfile.read_text())
            pidfile.unlink(missing_ok=True)
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for pid in pids.values():
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _alive(pid)  # reap

    def _kill_strays(self) -> None:
        """Shims of our containerd that outlived it (they carry its socket path on their command line)."""
        sock = str(self.path / "containerd" / "containerd.sock")
        for pid in _pids_mentioning(sock):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _pids_mentioning(sock):
            time.sleep(0.05)

    def _remove_netns(self) -> None:
        for name in self._our_netns():
            _run("ip", "netns", "del", name)

    def _our_netns(self) -> list[str]:
        out = _run("ip", "netns", "list").stdout
        return [ln.split()[0] for ln in out.splitlines() if ln.split() and ln.split()[0].startswith(self.netns_prefix)]

    def _remove_bridge_and_rules(self) -> None:
        if Path(f"/sys/class/net/{self.bridge}").exists():
            _run("ip", "link", "del", self.bridge)
        if self._firewall_table_exists():
            _run("nft", "delete", "table", "inet", table_name(self.bridge))
        for table in ("nat", "filter"):
            rules = _iptables_rules(table)
            # per-container chains (bridge ipMasq "CNI-<hash>") that serve our subnet: drop whole
            doomed = {r[1] for r in rules if _in_subnet(r, self.subnet) and _is_container_chain(r[1])}
            doomed |= {_jump(r) for r in rules if _in_subnet(r, self.subnet) and _is_container_chain(_jump(r))}
            doomed.discard("")
            for rule in rules:
                if rule[1] not in doomed and (_in_subnet(rule, self.subnet) or _jump(rule) in doomed):
                    _run("iptables", "-w", "-t", table, "-D", *rule[1:])
            for chain in doomed:
                _run("iptables", "-w", "-t", table, "-F", chain)
                _run("iptables", "-w", "-t", table, "-X", chain)

    def _firewall_table_exists(self) -> bool:
        """The daemon's namespace isolation table for our bridge (network/tenant_firewall.py)."""
        if not shutil.which("nft"):
            return False
        return _run("nft", "list", "table", "inet", table_name(self.bridge)).returncode == 0

    def _remove_runtime_leftovers(self, namespaces: set[str]) -> None:
        """runc leaves the empty per-namespace cgroup parents and its runtime root behind.
        Only empty directories are removed, so another containerd's live tasks are never touched."""
        for ns in namespaces:
            for ctl in Path("/sys/fs/cgroup").iterdir():
                d = ctl / ns
                if d.is_dir():
                    for child in sorted((p for p in d.rglob("*") if p.is_dir()), reverse=True):
                        with contextlib.suppress(OSError):
                            child.rmdir()
                    with contextlib.suppress(OSError):
                        d.rmdir()
            with contextlib.suppress(OSError):
                Path(f"/run/containerd/runc/{ns}").rmdir()

    def _mounts(self) -> list[str]:
        prefix = str(self.path) + "/"
        lines = Path("/proc/self/mounts").read_text().splitlines()
        return [ln.split()[1] for ln in lines if ln.split()[1].startswith(prefix)]

    # --- checks ------------------------------------------------------------------------------

    def leaks(self) -> list[str]:
        """What :meth:`down` should have removed but is still there (empty = clean)."""
        found: list[str] = []
        found += [f"netns {n}" for n in self._our_netns()]
        if Path(f"/sys/class/net/{self.bridge}").exists():
            found.append(f"bridge {self.bridge}")
        found += [f"process {name} (pid {pid})" for name, pid in self.pids.items() if _alive(pid)]
        found += [f"process {pid}: {_cmdline(pid)}" for pid in _pids_mentioning(str(self.path) + "/")]
        found += [f"mount {m}" for m in self._mounts()]
        for table in ("nat", "filter"):
            found += [f"iptables -t {table} {shlex.join(r)}" for r in _iptables_rules(table)
                      if _in_subnet(r, self.subnet)]
        if self._firewall_table_exists():
            found.append(f"nftables table inet {table_name(self.bridge)}")
        if self.path.exists():
            found.append(f"directory {self.path}")
        if (JOURNALD_SHARE / "users" / _user_key(self.dir)).exists():
            found.append(f"journald registration {JOURNALD_SHARE / 'users' / _user_key(self.dir)}")
        return found


@contextlib.contextmanager
def _journald_share() -> Iterator[Path]:
    (JOURNALD_SHARE / "users").mkdir(parents=True, exist_ok=True)
    with open(JOURNALD_SHARE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield JOURNALD_SHARE


def _user_key(env_dir: str) -> str:
    return env_dir.strip("/").replace("/", "_") or "root"


def _journald_running() -> bool:
    alive = _run("pgrep", "-x", "systemd-journal").returncode == 0
    return alive and Path("/run/systemd/journal/socket").is_socket()


def _alive(pid: int) -> bool:
    """Also reaps our own exited children, which would otherwise linger as zombies and look alive."""
    if pid in _CHILDREN:
        if _CHILDREN[pid].poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _pids_mentioning(text: str) -> list[int]:
    me = os.getpid()
    pids = (int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit())
    return [pid for pid in pids if pid != me and text in _cmdline(pid) and _alive(pid)]


def _iptables_rules(table: str) -> list[list[str]]:
    """``iptables -S`` of a whole table as argument lists (``["-A", chain, ...]``)."""
    try:
        out = _run("iptables", "-w", "-t", table, "-S").stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [shlex.split(ln) for ln in out.splitlines() if ln.startswith("-A ")]


def _in_subnet(rule: list[str], subnet: str) -> bool:
    net = ipaddress.ip_network(subnet)
    for opt in ("-s", "-d"):
        if opt in rule:
            try:
                value = ipaddress.ip_network(rule[rule.index(opt) + 1], strict=False)
            except (ValueError, IndexError):
                continue
            if value.version == net.version and value.subnet_of(net):  # type: ignore[arg-type]
                return True
    return False


def _jump(rule: list[str]) -> str:
    return rule[rule.index("-j") + 1] if "-j" in rule[:-1] else ""


def _is_container_chain(chain: str) -> bool:
    """bridge ipMasq's per-container chains are "CNI-" plus a hash; the shared ones have names."""
    shared = ("CNI-FORWARD", "CNI-ADMIN", "CNI-HOSTPORT-")
    return chain.startswith("CNI-") and not chain.startswith(shared)


def main() -> None:
    parser = argparse.ArgumentParser(description="start/stop the real test infrastructure")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", default="/tmp/fdpy-env")
    parser.add_argument("--bridge", default=TestEnv.bridge)
    parser.add_argument("--subnet", default=TestEnv.subnet)
    parser.add_argument("--netns-prefix", default=TestEnv.netns_prefix)
    ns = parser.parse_args()
    if ns.action == "up":
        why = missing_prerequisite()
        if why:
            raise SystemExit(why)
        env = TestEnv(dir=ns.dir, bridge=ns.bridge, subnet=ns.subnet, netns_prefix=ns.netns_prefix).up()
        print(json.dumps(asdict(env), indent=2))
    else:
        saved = Path(ns.dir) / "env.json"
        if saved.exists():
            env = TestEnv(**json.loads(saved.read_text()))
        else:
            env = TestEnv(dir=ns.dir, bridge=ns.bridge, subnet=ns.subnet, netns_prefix=ns.netns_prefix)
        env.down()
        leaks = env.leaks()
        if leaks:
            raise SystemExit("still there after down:\n  " + "\n  ".join(leaks))


if __name__ == "__main__":
    main()
