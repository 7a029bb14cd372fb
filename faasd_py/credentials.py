"""The admin credentials for the /system API and the NATS token: generated once into the state
dir, mode 0600.

Kept apart from the HTTP layer because the installer and the daemon both create them and the
gateway only reads them.
"""

from __future__ import annotations

import os
import secrets

from faasd_py.config import Settings

DEFAULT_USER = "admin"
NATS_TOKEN_VARIABLE = "FAASD_PY_NATS_TOKEN"  # how the compose file refers to the token


def _write_private(path: os.PathLike[str] | str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def ensure_credentials(settings: Settings) -> None:
    """Create the user and password files if absent; never overwrite (re-installs keep the password)."""
    settings.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(settings.secrets_dir, 0o700)
    if not settings.user_file.exists():
        _write_private(settings.user_file, DEFAULT_USER)
    if not settings.password_file.exists():
        _write_private(settings.password_file, secrets.token_urlsafe(32))
    if not settings.nats_token_file.exists():
        _write_private(settings.nats_token_file, secrets.token_urlsafe(32))


def nats_token(settings: Settings) -> str:
    """What NATS clients must present: the core service requires it (nats.conf)."""
    return settings.nats_token_file.read_text().strip()
