"""Print the settings install.sh needs as shell assignments (``eval "$(python settings_env.py FILE)"``).

Run with the installed venv's interpreter, so the shell script reads the config exactly the way
the daemon will (file, then FAASD_PY_* env), instead of parsing YAML itself.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from faasd_py.config import CONFIG_ENV, load_settings
from faasd_py.install import gateway_url, login_command


def _core_netns_prefix(prefix: str) -> str:
    try:  # needs grpc: absent when the checkout's code runs on the system python (uninstall)
        from faasd_py.provider.core_services import core_netns_prefix
    except ImportError:
        return ""
    return core_netns_prefix(prefix)


def main() -> None:
    path = Path(sys.argv[1])
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    settings = load_settings(path if path.exists() else Path(os.devnull), env=env)
    values = {
        "STATE_DIR": settings.state_dir,
        "RUN_DIR": settings.run_dir,
        "CONTAINERD_SOCKET": settings.containerd_socket,
        "GATEWAY_URL": gateway_url(settings),
        "LOGIN_COMMAND": login_command(settings),
        "BRIDGE": settings.network.bridge,
        "NETNS_PREFIX": settings.network.netns_prefix,
        "IPAM_DIR": settings.network.ipam_dir,
        "COMPOSE_PATH": settings.compose_path,
        "CORE_NETNS_PREFIX": _core_netns_prefix(settings.network.netns_prefix),
    }
    for key, value in values.items():
        print(f"S_{key}={shlex.quote(str(value))}")


if __name__ == "__main__":
    main()
