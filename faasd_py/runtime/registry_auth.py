"""Registry credentials (docker ``config.json``) and the Distribution auth handshake.

Kept apart from the HTTP plumbing so the rules (which key docker.io uses, how a challenge is
parsed, when a token may be reused) can be read and tested on their own.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from faasd_py.errors import RegistryAuthError

_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
_CHALLENGE = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""  # an OAuth2 refresh token (docker login with SSO)

    def basic_header(self) -> str | None:
        if not self.username and not self.password:
            return None
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def auth_key(host: str) -> str:
    """The ``auths`` key a host's credentials are filed under (every Docker Hub alias → docker.io)."""
    if "://" in host:
        host = urlsplit(host).netloc
    host = host.split("/")[0].lower()
    return "docker.io" if host in _HUB_ALIASES else host


class DockerConfig:
    """Reads ``auths`` from a docker config.json, again whenever the file changes (registry-login)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._stamp: tuple[float, int] | None = None
        self._creds: dict[str, Credentials] = {}

    def lookup(self, host: str) -> Credentials | None:
        self._reload()
        return self._creds.get(auth_key(host))

    def _reload(self) -> None:
        if self._path is None:
            return
        try:
            st = self._path.stat()
        except FileNotFoundError:
            self._stamp, self._creds = None, {}
            return
        except OSError as exc:
            raise RegistryAuthError(f"cannot read registry credentials {self._path}: {exc.strerror}") from exc
        if self._stamp == (st.st_mtime, st.st_size):
            return
        self._creds = parse_docker_config(self._path.read_bytes(), str(self._path))
        self._stamp = (st.st_mtime, st.st_size)


def parse_docker_config(body: bytes, where: str) -> dict[str, Credentials]:
    try:
        data = json.loads(body or b"{}")
    except ValueError as exc:
        raise RegistryAuthError(f"registry credentials {where}: not valid JSON") from exc
    auths = data.get("auths") if isinstance(data, dict) else None
    creds: dict[str, Credentials] = {}
    for key, entry in (auths or {}).items():
        if not isinstance(entry, dict):
            continue
        username, password = str(entry.get("username") or ""), str(entry.get("password") or "")
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise RegistryAuthError(f"registry credentials {where}: auths.{key}.auth is not base64") from exc
            username, sep, password = decoded.partition(":")
            if not sep:
                raise RegistryAuthError(f"registry credentials {where}: auths.{key}.auth is not user:password")
        token = str(entry.get("identitytoken") or "")
        if username or password or token:
            creds[auth_key(key)] = Credentials(username, password, token)
    return creds


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # "bearer" or "basic"
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """First usable challenge of a ``WWW-Authenticate`` header (Bearer preferred over Basic)."""
    found: list[Challenge] = []
    for part in re.split(r"(?:^|,)\s*(?=(?:Bearer|Basic)\s)", header, flags=re.IGNORECASE):
        part = part.strip()
        if not part:
            continue
        scheme, _, rest = part.partition(" ")
        params = {
            m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3) or "").replace('\\"', '"')
            for m in _CHALLENGE.finditer(rest)
        }
        if scheme.lower() in ("bearer", "basic"):
            found.append(Challenge(scheme.lower(), params))
    found.sort(key=lambda c: c.scheme != "bearer")
    return found[0] if found else None


class TokenCache:
    """Bearer tokens per (registry host, scope) until shortly before they expire."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}

    def get(self, host: str, scope: str) -> str | None:
        hit = self._tokens.get((host, scope))
        if hit is None or hit[1] <= time.monotonic():
            return None
        return hit[0]

    def put(self, host: str, scope: str, token: str, expires_in: float) -> None:
        # keep a margin so a token never expires between the check and the request
        self._tokens[(host, scope)] = (token, time.monotonic() + max(expires_in, 60.0) - 10.0)

    def drop(self, host: str, scope: str) -> None:
        self._tokens.pop((host, scope), None)
