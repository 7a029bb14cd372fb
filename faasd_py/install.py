"""``faasd-py install``: prepare a host once so ``faasd-py up`` can start.

Safe to run again and again: a re-run is how an upgrade happens, so it never replaces what an
operator or an earlier run made (the admin password, config edits, data). It only fills in what
is missing, tightens modes that are too open, and rewrites files it owns (the unit, the sysctl
drop-in) when their content changed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from faasd_py.config import CONFIG_ENV, DEFAULT_CONFIG_FILE, Settings
from faasd_py.credentials import DEFAULT_USER, ensure_credentials

UNIT_NAME = "faasd-py.service"


def _default_executable() -> Path:
    return Path(sys.prefix) / "bin" / "faasd-py"


@dataclass(frozen=True, slots=True)
class HostPaths:
    """System locations outside the state dir; tests point them into a temporary directory."""

    sysctl_conf: Path = Path("/etc/sysctl.d/90-faasd-py.conf")
    ip_forward: Path = Path("/proc/sys/net/ipv4/ip_forward")
    unit_dir: Path = Path("/etc/systemd/system")
    executable: Path = field(default_factory=_default_executable)


@dataclass(frozen=True, slots=True)
class InstallResult:
    actions: tuple[str, ...]  # what changed on this run, in order; empty on a no-op re-run
    warnings: tuple[str, ...]
    password_generated: bool
    config_written: bool
    unit_file: Path | None  # None when systemd=False
    unit_changed: bool
    login_command: str

    def summary(self) -> str:
        lines = [f"  {a}" for a in self.actions] or ["  nothing to change (already installed)"]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(["faasd-py install:", *lines, "", "Log in with:", f"  {self.login_command}"])


def systemd_is_running() -> bool:
    """True when PID 1 is systemd (the check sd_booted(3) documents)."""
    return Path("/run/systemd/system").is_dir()


def install(
    settings: Settings,
    *,
    systemd: bool,
    config_file: Path = DEFAULT_CONFIG_FILE,
    host: HostPaths | None = None,
) -> InstallResult:
    """Create state dirs, the admin credentials, a default config, IP forwarding and the unit."""
    host = host or HostPaths()
    actions: list[str] = []
    warnings: list[str] = []

    _ensure_dir(settings.state_dir, 0o755, actions)
    _ensure_dir(settings.secrets_dir, 0o700, actions)
    _tighten(settings.secrets_dir, 0o700, actions)
    password_generated = _ensure_credentials(settings)
    if password_generated:
        actions.append(f"generated the admin password into {settings.password_file}")
    _tighten(settings.user_file, 0o600, actions)
    _tighten(settings.password_file, 0o600, actions)

    config_file.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    config_written = _write_if_absent(config_file, render_config(settings), 0o644)
    if config_written:
        actions.append(f"wrote default config {config_file}")

    _enable_ip_forward(host, actions, warnings)

    unit_file: Path | None = None
    unit_changed = False
    if systemd:
        unit_file = host.unit_dir / UNIT_NAME
        custom = None if config_file == DEFAULT_CONFIG_FILE else config_file
        unit_changed = _write_if_changed(unit_file, render_unit(host.executable, custom), 0o644)
        if unit_changed:
            actions.append(f"installed {unit_file}")

    return InstallResult(
        actions=tuple(actions),
        warnings=tuple(warnings),
        password_generated=password_generated,
        config_written=config_written,
        unit_file=unit_file,
        unit_changed=unit_changed,
        login_command=login_command(settings),
    )


def gateway_url(settings: Settings) -> str:
    """Where a local faas-cli reaches the API (a wildcard listen address means loopback)."""
    host = settings.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    elif ":" in host:  # an IPv6 literal
        host = f"[{ipaddress.ip_address(host)}]"
    return f"http://{host}:{settings.port}"


def login_command(settings: Settings) -> str:
    user = DEFAULT_USER
    if settings.user_file.is_file():
        user = settings.user_file.read_text().strip() or DEFAULT_USER
    return (
        f"sudo cat {shlex.quote(str(settings.password_file))} | "
        f"faas-cli login -g {gateway_url(settings)} -u {shlex.quote(user)} --password-stdin"
    )


# --- renderers -------------------------------------------------------------------------------


def render_unit(executable: Path, config_file: Path | None = None) -> str:
    """The systemd unit; ``systemd/faasd-py.service`` in the repo is this for /opt/faasd-py."""
    exec_start = shlex.join([str(executable), "up"])
    env = "PYTHONUNBUFFERED=1"
    if config_file is not None:
        env += " " + _quote_env(f"{CONFIG_ENV}={config_file}")
    return f"""\
# Installed by `faasd-py install`; re-running it rewrites this file. Put local changes in
# `systemctl edit faasd-py` (a drop-in), not here.
[Unit]
Description=faasd-py: OpenFaaS functions on containerd
After=containerd.service network-online.target
Wants=network-online.target
Requires=containerd.service

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
Restart=on-failure
RestartSec=2
# restoring many functions can take a while before READY=1
TimeoutStartSec=180
WatchdogSec=30
# Only the daemon is stopped on restart: functions belong to containerd and keep serving
# (its log helper exits by itself once the daemon is gone).
KillMode=process
TimeoutStopSec=30
LimitNOFILE=1048576
# every function's output reaches journald through the daemon's log helper: no per-unit rate limit
LogRateLimitIntervalSec=0
Environment={env}
StandardOutput=journal
StandardError=journal
SyslogIdentifier=faasd-py

[Install]
WantedBy=multi-user.target
"""


def _quote_env(assignment: str) -> str:
    """systemd's Environment= splits on spaces unless the assignment is double-quoted."""
    if not any(c in assignment for c in ' "\\'):
        return assignment
    return '"' + assignment.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(settings: Settings) -> str:
    """YAML that lists every setting: values that differ from the defaults are active, the
    rest are commented out, so an operator sees every knob and the file loads back to ``settings``."""
    lines = [
        "# faasd-py configuration (written once by `faasd-py install`; never overwritten).",
        "# Every key is optional. Commented lines show the default value.",
        "# Env overrides: FAASD_PY_<SECTION>__<KEY>=value, e.g. FAASD_PY_NETWORK__SUBNET=10.62.0.0/16",
        "# Reference: docs/configuration.md",
    ]
    _render_section(settings, Settings(), 0, lines)
    return "\n".join(lines) + "\n"


def _render_section(obj: Any, default: Any, depth: int, lines: list[str]) -> None:
    indent = "  " * depth
    for f in dataclasses.fields(obj):
        value, base = getattr(obj, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            if value == base:  # whole section commented from column 0: uncommenting keeps YAML valid
                sub: list[str] = []
                _render_section(value, base, depth + 1, sub)
                lines.append(f"# {indent}{f.name}:")
                lines.extend(f"# {ln.replace('# ', '', 1)}" for ln in sub)
            else:
                lines.append(f"{indent}{f.name}:")
                _render_section(value, base, depth + 1, lines)
        elif value == base:
            lines.append(f"{indent}# {f.name}: {_scalar(value)}")
        else:
            lines.append(f"{indent}{f.name}: {_scalar(value)}")


def _scalar(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip()
    return text.removesuffix("...").strip()


# --- file helpers ----------------------------------------------------------------------------


def _ensure_dir(path: Path, mode: int, actions: list[str]) -> None:
    """Create with ``mode`` exactly (not masked by umask); an existing directory is left alone."""
    if not path.is_dir():
        path.mkdir(mode=mode, parents=True)
        path.chmod(mode)
        actions.append(f"created {path}")


def _tighten(path: Path, mode: int, actions: list[str]) -> None:
    """Secrets must not stay readable by others because an earlier run or a human loosened them."""
    current = path.stat().st_mode & 0o777
    wanted = current & mode
    if current != wanted:
        path.chmod(wanted)
        actions.append(f"chmod {wanted:o} {path}")


def _atomic_write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # umask may have removed bits we want
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_if_absent(path: Path, text: str, mode: int) -> bool:
    if path.exists():
        return False
    _atomic_write(path, text, mode)
    return True


def _write_if_changed(path: Path, text: str, mode: int) -> bool:
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, text, mode)
    return True


def _ensure_credentials(settings: Settings) -> bool:
    """Generate the admin password once (the daemon's own rules); True if it was generated now.
    An empty password file is what an interrupted earlier run leaves: it counts as missing."""
    path = settings.password_file
    if path.is_file() and not path.read_text().strip():
        path.unlink()
    existed = path.exists()
    ensure_credentials(settings)
    return not existed


def _enable_ip_forward(host: HostPaths, actions: list[str], warnings: list[str]) -> None:
    """Functions reach the outside through the bridge's NAT, which needs forwarding on the host."""
    if _write_if_changed(host.sysctl_conf, "# written by faasd-py install\nnet.ipv4.ip_forward = 1\n", 0o644):
        actions.append(f"persisted net.ipv4.ip_forward=1 in {host.sysctl_conf}")
    try:
        if host.ip_forward.read_text().strip() != "1":
            host.ip_forward.write_text("1\n")
            actions.append("enabled net.ipv4.ip_forward=1")
    except OSError as exc:
        warnings.append(f"could not enable net.ipv4.ip_forward ({exc}); functions may not reach outside hosts")


def main(argv: list[str] | None = None) -> None:
    """``python -m faasd_py.install``: the same as ``faasd-py install`` without the CLI around it."""
    import argparse

    from faasd_py.config import load_settings
    from faasd_py.errors import FaasdError

    parser = argparse.ArgumentParser(description="prepare this host for faasd-py (idempotent)")
    parser.add_argument("--config", type=Path, default=None, help=f"config file (default {DEFAULT_CONFIG_FILE})")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--systemd", action=argparse.BooleanOptionalAction, default=None,
                        help="install the unit (default: when systemd is PID 1)")
    ns = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in ns.set)
    config_file = ns.config or Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE)
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    try:
        # an absent file means all defaults: it is the file this command is about to write
        settings = load_settings(config_file if config_file.exists() else Path(os.devnull), env=env,
                                 overrides=overrides)
    except FaasdError as exc:
        raise SystemExit(f"faasd-py install: {exc.message}") from exc
    systemd = systemd_is_running() if ns.systemd is None else ns.systemd
    result = install(settings, systemd=systemd, config_file=config_file)
    print(result.summary())


if __name__ == "__main__":
    main()
