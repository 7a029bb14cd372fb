from __future__ import annotations

import configparser
import shutil
import stat
import string
import subprocess
from pathlib import Path

import pytest
import yaml

from faasd_py import install as install_mod
from faasd_py.config import Settings, load_settings
from faasd_py.credentials import DEFAULT_USER
from faasd_py.install import (
    HostPaths,
    InstallResult,
    gateway_url,
    install,
    render_config,
    render_unit,
)

REPO = Path(__file__).resolve().parents[2]


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def host(tmp_path: Path) -> HostPaths:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "ip_forward").write_text("0\n")
    exe = tmp_path / "venv" / "bin" / "faasd-py"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return HostPaths(
        sysctl_conf=tmp_path / "etc" / "sysctl.d" / "90-faasd-py.conf",
        ip_forward=tmp_path / "proc" / "ip_forward",
        unit_dir=tmp_path / "etc" / "systemd" / "system",
        executable=exe,
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "var" / "lib" / "faasd-py", run_dir=tmp_path / "run")


def run(settings: Settings, host: HostPaths, config: Path, systemd: bool = True) -> InstallResult:
    return install(settings, systemd=systemd, config_file=config, host=host)


def test_fresh_install_creates_everything_with_safe_modes(tmp_path: Path, settings: Settings, host: HostPaths) -> None:
    config = tmp_path / "etc" / "faasd-py" / "config.yaml"
    result = run(settings, host, config)

    assert mode(settings.state_dir) == 0o755
    assert mode(settings.secrets_dir) == 0o700
    password = settings.password_file.read_text()
    assert len(password) >= 32
    assert set(password) <= set(string.ascii_letters + string.digits + "-_")
    assert mode(settings.password_file) == 0o600
    assert settings.user_file.read_text() == DEFAULT_USER
    assert mode(settings.user_file) == 0o600
    assert config.is_file() and mode(config) == 0o644
    assert host.sysctl_conf.read_text().splitlines()[-1] == "net.ipv4.ip_forward = 1"
    assert host.ip_forward.read_text().strip() == "1"
    assert result.unit_file == host.unit_dir / "faasd-py.service"
    assert result.unit_changed and result.password_generated and result.config_written
    unit = result.unit_file.read_text()
    assert f"ExecStart={host.executable} up\n" in unit
    assert f"Environment=PYTHONUNBUFFERED=1 FAASD_PY_CONFIG={config}\n" in unit
    assert result.warnings == ()
    assert any("generated the admin password" in a for a in result.actions)
    assert result.login_command == (
        f"sudo cat {settings.password_file} | faas-cli login -g http://127.0.0.1:8080 -u admin --password-stdin"
    )
    assert result.login_command in result.summary()


def test_rerun_keeps_password_and_config_edits_and_changes_nothing(
    tmp_path: Path, settings: Settings, host: HostPaths
) -> None:
    config = tmp_path / "config.yaml"
    run(settings, host, config)
    password = settings.password_file.read_text()
    config.write_text(config.read_text() + "log_level: debug  # local edit\n")

    again = run(settings, host, config)

    assert settings.password_file.read_text() == password
    assert config.read_text().endswith("log_level: debug  # local edit\n")
    assert again.actions == ()
    assert not (again.password_generated or again.config_written or again.unit_changed)
    assert "nothing to change" in again.summary()


def test_rerun_tightens_loosened_secrets_and_refills_an_empty_password(
    tmp_path: Path, settings: Settings, host: HostPaths
) -> None:
    run(settings, host, tmp_path / "config.yaml")
    settings.secrets_dir.chmod(0o755)
    settings.password_file.write_text("")
    settings.password_file.chmod(0o644)

    result = run(settings, host, tmp_path / "config.yaml")

    assert mode(settings.secrets_dir) == 0o700
    assert mode(settings.password_file) == 0o600
    assert result.password_generated and len(settings.password_file.read_text()) >= 32
    assert any(a.startswith("chmod 700") for a in result.actions)


def test_two_installs_generate_different_passwords(tmp_path: Path, host: HostPaths) -> None:
    a = Settings(state_dir=tmp_path / "a")
    b = Settings(state_dir=tmp_path / "b")
    run(a, host, tmp_path / "a.yaml")
    run(b, host, tmp_path / "b.yaml")
    assert a.password_file.read_text() != b.password_file.read_text()


def test_without_systemd_no_unit_is_written(tmp_path: Path, settings: Settings, host: HostPaths) -> None:
    result = run(settings, host, tmp_path / "config.yaml", systemd=False)
    assert result.unit_file is None and not result.unit_changed
    assert not host.unit_dir.exists()


def test_default_config_path_gives_plain_execstart(settings: Settings, host: HostPaths, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    default = tmp_path / "default.yaml"
    monkeypatch.setattr(install_mod, "DEFAULT_CONFIG_FILE", default)
    result = install(settings, systemd=True, config_file=default, host=host)
    assert result.unit_file is not None
    assert "FAASD_PY_CONFIG" not in result.unit_file.read_text()


def test_unwritable_ip_forward_is_a_warning_not_a_failure(tmp_path: Path, settings: Settings, host: HostPaths) -> None:
    broken = HostPaths(sysctl_conf=host.sysctl_conf, ip_forward=tmp_path / "missing" / "ip_forward",
                       unit_dir=host.unit_dir, executable=host.executable)
    result = run(settings, broken, tmp_path / "config.yaml")
    assert len(result.warnings) == 1 and "ip_forward" in result.warnings[0]
    assert "warning:" in result.summary()


def test_default_config_is_all_comments_and_loads_as_defaults(tmp_path: Path) -> None:
    text = render_config(Settings())
    assert yaml.safe_load(text) is None
    assert all(ln.startswith("#") for ln in text.splitlines() if ln.strip())
    for line in ("# state_dir: /var/lib/faasd-py", "# network:", "#   subnet: 10.62.0.0/16", "#   ready: 60.0"):
        assert line in text.splitlines()
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert load_settings(path, env={}) == Settings()


def test_config_keeps_non_default_values_and_round_trips(tmp_path: Path) -> None:
    s = Settings(state_dir=tmp_path / "state", port=18080, journald=False)
    s.network.subnet = "10.99.0.0/16"
    s.network.nameservers = ["1.1.1.1", "9.9.9.9"]
    s.registry.mirrors = {"docker.io": ["http://127.0.0.1:5000"]}
    s.registry.insecure = ["127.0.0.1:5000"]
    s.timeouts.ready = 12.5
    text = render_config(s)
    assert "\nport: 18080\n" in text and "\n# host: 0.0.0.0\n" in text
    assert "\nnetwork:\n" in text and "\n  subnet: 10.99.0.0/16\n" in text and "\n  # bridge: openfaas0\n" in text
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert load_settings(path, env={}) == s


@pytest.mark.parametrize(
    ("host_", "url"),
    [("0.0.0.0", "http://127.0.0.1:8080"), ("::", "http://127.0.0.1:8080"), ("127.0.0.2", "http://127.0.0.2:8080"),
     ("::1", "http://[::1]:8080"), ("example.internal", "http://example.internal:8080")],
)
def test_gateway_url_reaches_a_wildcard_listener_over_loopback(host_: str, url: str) -> None:
    assert gateway_url(Settings(host=host_)) == url


def test_repo_unit_file_is_the_rendered_unit_for_opt() -> None:
    """systemd/faasd-py.service is documentation of what `faasd-py install` writes: keep them equal."""
    assert (REPO / "systemd" / "faasd-py.service").read_text() == render_unit(Path("/opt/faasd-py/bin/faasd-py"))


def test_unit_has_the_directives_the_daemon_relies_on() -> None:
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(render_unit(Path("/opt/faasd-py/bin/faasd-py")))
    svc = unit["Service"]
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "main"
    assert svc["ExecStart"] == "/opt/faasd-py/bin/faasd-py up"
    assert svc["Restart"] == "on-failure" and svc["RestartSec"] == "2"
    assert svc["WatchdogSec"] == "30"
    assert svc["KillMode"] == "process"  # functions belong to containerd and survive a daemon restart
    assert int(svc["LimitNOFILE"]) >= 65536
    assert unit["Unit"]["Requires"] == "containerd.service"
    assert set(unit["Unit"]["After"].split()) == {"containerd.service", "network-online.target"}
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, host: HostPaths) -> None:
    unit = tmp_path / "faasd-py.service"
    unit.write_text(render_unit(host.executable, tmp_path / 'my "config".yaml'))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    ours = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "faasd-py" in ln]
    assert proc.returncode == 0, proc.stderr
    assert ours == []  # unknown keys and bad values are only warnings: treat them as failures


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """Guards the test above: the same check does fail on a bad unit."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "faasd-py.service"
    unit.write_text(render_unit(tmp_path / "missing-binary").replace("KillMode=process", "KillMode=procss"))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 or "faasd-py" in proc.stderr


def test_module_main_loads_settings_and_passes_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[Settings, bool, Path]] = []

    def fake(settings: Settings, *, systemd: bool, config_file: Path, host: HostPaths | None = None) -> InstallResult:
        calls.append((settings, systemd, config_file))
        return InstallResult((), (), False, False, None, False, "LOGIN")

    monkeypatch.setattr(install_mod, "install", fake)
    monkeypatch.setenv("FAASD_PY_CONFIG", str(tmp_path / "elsewhere.yaml"))  # must not be required to exist
    config = tmp_path / "absent.yaml"
    install_mod.main(["--config", str(config), "--set", "network.subnet=10.77.0.0/16", "--no-systemd"])
    [(settings, systemd, path)] = calls
    assert settings.network.subnet == "10.77.0.0/16" and systemd is False and path == config
    assert "LOGIN" in capsys.readouterr().out
