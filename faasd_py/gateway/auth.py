"""HTTP Basic auth for /system/* and /ui/, the way the OpenFaaS gateway does it.

The credentials are files the daemon writes into the state dir (``basic-auth-user``,
``basic-auth-password``); this module only reads them. Both user and password are compared
with :func:`hmac.compare_digest`, and both comparisons always run, so the response time does not
tell which part was wrong.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from pathlib import Path

from faasd_py.config import Settings
from faasd_py.errors import RuntimeFailure

DEFAULT_USER = "admin"
REALM_HEADER = 'Basic realm="Restricted"'
INVALID_CREDENTIALS = "invalid credentials"


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    user: str
    password: str

    def __repr__(self) -> str:  # never print the password in logs or tracebacks
        return f"Credentials(user={self.user!r}, password=***)"

    @classmethod
    def load(cls, settings: Settings) -> Credentials:
        """Read the files the daemon generated; refuse to run with no or an empty password."""
        user = _read(settings.user_file, required=False) or DEFAULT_USER
        password = _read(settings.password_file, required=True)
        if not password:
            raise RuntimeFailure(f"basic auth: {settings.password_file} is empty")
        return cls(user=user, password=password)

    def check(self, authorization: str | None) -> bool:
        """True if an ``Authorization`` header carries exactly these credentials."""
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        if not sep:
            return False
        user_ok = hmac.compare_digest(user, self.user.encode())
        password_ok = hmac.compare_digest(password, self.password.encode())
        return user_ok and password_ok


def _read(path: Path, *, required: bool) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        if required:
            raise RuntimeFailure(f"basic auth: {path} does not exist (the daemon creates it at install)") from None
        return ""
    except OSError as exc:
        raise RuntimeFailure(f"basic auth: cannot read {path}: {exc.strerror}") from exc
