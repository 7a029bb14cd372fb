"""Registry credentials (docker ``config.json``) and the Distribution auth handshake.

Kept apart from the HTTP plumbing so the rules (which key docker.io uses, where a host's
credentials come from, how a challenge is parsed, when a token may be reused) can be read and
tested on their own.

Where credentials come from follows docker/cli: ``credHelpers[host]`` if the host is listed,
else ``credsStore`` if set, else ``auths[host]``. When a helper applies, ``auths`` is not
consulted for that host (docker/cli keeps only non-secret fields such as the e-mail from it), so
a helper saying "not found" means anonymous access, as it does for docker.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from faasd_py.errors import RegistryAuthError

_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
_CHALLENGE = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')

HUB_SERVER_URL = "https://index.docker.io/v1/"  # what docker login files Docker Hub under
HELPER_PREFIX = "docker-credential-"
HELPER_TIMEOUT = 10.0
# Long enough for the requests of one pull to share a helper's answer, short enough that a new
# login or a rotated (e.g. cloud, short-lived) token is picked up by the next deploy.
HELPER_CACHE_SECONDS = 30.0
_NOT_FOUND = "credentials not found in native keychain"
_TOKEN_USERNAME = "<token>"  # the helper's Secret is an identity (refresh) token
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)  # an OAuth2 refresh token (docker login with SSO)

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


def helper_server_url(host: str) -> str:
    """What a credential helper is asked for: Docker Hub by docker's index URL, others by host[:port]."""
    key = auth_key(host)
    return HUB_SERVER_URL if key == "docker.io" else key


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """The parts of a docker config.json that say where credentials come from."""

    auths: dict[str, Credentials] = field(default_factory=dict)
    creds_store: str = ""
    cred_helpers: dict[str, str] = field(default_factory=dict)  # auth_key(host) -> helper suffix

    def helper_for(self, host: str) -> str:
        """The helper suffix for ``host``, or "" for the inline ``auths``.

        A host listed in credHelpers with an empty name uses ``auths``, as in docker/cli.
        """
        return self.cred_helpers.get(auth_key(host), self.creds_store)


class DockerConfig:
    """A docker config.json, read again whenever it changes (registry-login), and its helpers' answers.

    The file is small and local, so it is checked with a plain ``stat`` per lookup; helpers are
    separate programs and run as subprocesses without blocking the event loop. Their answers
    (secrets included) are kept for ``cache_seconds`` only.
    """

    def __init__(self, path: Path | None, *, helper_timeout: float = HELPER_TIMEOUT,
                 cache_seconds: float = HELPER_CACHE_SECONDS) -> None:
        self._path = path
        self._stamp: tuple[float, int] | None = None
        self._file = ConfigFile()
        self._helper_timeout = helper_timeout
        self._cache_seconds = cache_seconds
        self._answers: dict[tuple[str, str], tuple[Credentials | None, float]] = {}  # -> (answer, expiry)
        self._asking: dict[tuple[str, str], asyncio.Lock] = {}  # one helper run at a time per (helper, key)

    async def lookup(self, host: str) -> Credentials | None:
        self._reload()
        key = auth_key(host)
        helper = self._file.helper_for(key)
        if not helper:
            return self._file.auths.get(key)
        return await self._ask(helper, key)

    def forget(self, host: str) -> None:
        """Drop cached helper answers for ``host`` (the registry rejected them; ask again next time)."""
        key = auth_key(host)
        for slot in [s for s in self._answers if s[1] == key]:
            del self._answers[slot]

    async def _ask(self, helper: str, key: str) -> Credentials | None:
        slot = (helper, key)
        async with self._asking.setdefault(slot, asyncio.Lock()):  # concurrent blob fetches share one run
            now = time.monotonic()
            self._answers = {s: hit for s, hit in self._answers.items() if hit[1] > now}
            if slot in self._answers:
                return self._answers[slot][0]
            creds = await run_credential_helper(helper, helper_server_url(key), timeout=self._helper_timeout)
            self._answers[slot] = (creds, time.monotonic() + self._cache_seconds)
            return creds

    def _reload(self) -> None:
        if self._path is None:
            return
        try:
            st = self._path.stat()
        except FileNotFoundError:
            self._stamp, self._file, self._answers = None, ConfigFile(), {}
            return
        except OSError as exc:
            raise RegistryAuthError(f"cannot read registry credentials {self._path}: {exc.strerror}") from exc
        if self._stamp == (st.st_mtime, st.st_size):
            return
        self._file = load_docker_config(self._path.read_bytes(), str(self._path))
        self._stamp, self._answers = (st.st_mtime, st.st_size), {}


def load_docker_config(body: bytes, where: str) -> ConfigFile:
    try:
        data = json.loads(body or b"{}")
    except ValueError as exc:
        raise RegistryAuthError(f"registry credentials {where}: not valid JSON") from exc
    if not isinstance(data, dict):
        return ConfigFile()
    return ConfigFile(_parse_auths(data.get("auths"), where), _parse_store(data.get("credsStore"), where),
                      _parse_helpers(data.get("credHelpers"), where))


def _helper_name(value: object, where: str, field_name: str) -> str:
    if not isinstance(value, str):
        raise RegistryAuthError(f"registry credentials {where}: {field_name} is not a string")
    if value and not _HELPER_NAME.fullmatch(value):
        raise RegistryAuthError(f"registry credentials {where}: {field_name} {value!r} is not a helper name "
                                f"(the part after {HELPER_PREFIX})")
    return value


def _parse_store(value: object, where: str) -> str:
    return "" if value is None else _helper_name(value, where, "credsStore")


def _parse_helpers(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RegistryAuthError(f"registry credentials {where}: credHelpers is not an object")
    return {auth_key(str(host)): _helper_name(name, where, f"credHelpers.{host}") for host, name in value.items()}


def _parse_auths(auths: object, where: str) -> dict[str, Credentials]:
    creds: dict[str, Credentials] = {}
    if not isinstance(auths, dict):
        return creds
    for key, entry in auths.items():
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


async def run_credential_helper(helper: str, server_url: str, *,
                                timeout: float = HELPER_TIMEOUT) -> Credentials | None:
    """``docker-credential-<helper> get`` for ``server_url``; None if the helper has nothing for it.

    Any other failure is a RegistryAuthError naming the helper. Messages never quote what the
    helper printed on success (that is the secret); on failure its output is an error text.
    """
    program = HELPER_PREFIX + helper
    path = shutil.which(program)
    if path is None:
        raise RegistryAuthError(f"credential helper {program} (for {server_url}) is not on the daemon's PATH "
                                f"({os.environ.get('PATH', '')})")
    try:
        # its own session: on a timeout the whole group goes, children that hold our pipes too
        proc = await asyncio.create_subprocess_exec(path, "get", stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise RegistryAuthError(f"credential helper {program}: cannot run {path} ({exc.strerror})") from exc
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(server_url.encode())  # no newline, as docker sends it
            code = await proc.wait()
    except TimeoutError:
        raise RegistryAuthError(f"credential helper {program} did not answer for {server_url} "
                                f"within {timeout:g} s") from None
    finally:
        if proc.returncode is None:  # timed out or cancelled
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    if code != 0:
        text = out.decode(errors="replace").strip()
        if text == _NOT_FOUND:
            return None
        status = f"exit status {code}" if code > 0 else f"killed by signal {-code}"
        detail = " ".join((text or err.decode(errors="replace")).split())[:300]
        raise RegistryAuthError(f"credential helper {program} failed for {server_url} ({status})"
                                + (f": {detail}" if detail else ""))
    return _helper_answer(out, program, server_url)


def _helper_answer(out: bytes, program: str, server_url: str) -> Credentials | None:
    malformed = RegistryAuthError(f"credential helper {program} answered for {server_url} with something other "
                                  "than the JSON object {ServerURL, Username, Secret} of the helper protocol")
    try:
        answer = json.loads(out)
    except ValueError:
        raise malformed from None
    if not isinstance(answer, dict):
        raise malformed
    username, secret = answer.get("Username") or "", answer.get("Secret") or ""
    if not isinstance(username, str) or not isinstance(secret, str):
        raise malformed
    if username == _TOKEN_USERNAME:
        return Credentials(identity_token=secret) if secret else None
    return Credentials(username, secret) if username or secret else None


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
