"""A private nats-server with JetStream for tests: a free loopback port, a temporary store.

As ../shared/ENVIRONMENT.md §7 starts it, minus the monitoring port. ``restart()`` keeps the
port and the store (a NATS outage and recovery, with the queued messages still there).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.infra import free_port


def nats_missing() -> str | None:
    return None if shutil.which("nats-server") else "nats-server not installed (apt-get install nats-server)"


class NatsServer:
    def __init__(self, workdir: Path, port: int | None = None, token: str = "") -> None:
        """``token``: clients must present it (as the shipped nats.conf requires the daemon's)."""
        self.dir = workdir
        self.port = port or free_port()
        self.token = token
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> NatsServer:
        store = self.dir / "store"
        store.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "nats.conf"
        conf.write_text(
            f"listen: 127.0.0.1:{self.port}\nserver_name: fdpy-test\n"
            f"jetstream {{\n  store_dir: {store}\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n"
            + (f'authorization {{\n  token: "{self.token}"\n}}\n' if self.token else "")
        )
        with open(self.dir / "nats.log", "ab") as log:
            self.proc = subprocess.Popen(["nats-server", "-c", str(conf)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {(self.dir / 'nats.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("nats-server did not listen in time")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
