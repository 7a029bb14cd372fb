"""An OCI Distribution client (aiohttp): resolve and fetch for pulls, blob/manifest upload for pushes.

Pulls try the configured mirrors in order and fall back to the upstream registry, so an
air-gapped host works with a mirror alone. Everything downloaded is checked against its digest.
Plain HTTP is used only for loopback registries and the ones listed as insecure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ipaddress
import json
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp
import yarl

from faasd_py import __version__
from faasd_py.config import RegistrySettings
from faasd_py.errors import ImageError, ImageNotFound, RegistryAuthError
from faasd_py.runtime import oci
from faasd_py.runtime.oci import Descriptor
from faasd_py.runtime.reference import DOCKER_HUB, Reference, parse_reference
from faasd_py.runtime.registry_auth import Challenge, DockerConfig, TokenCache, parse_challenge

CHUNK = 1 << 20
MAX_MANIFEST = 4 << 20  # what distribution itself accepts


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str  # base URL without /v2, e.g. "https://registry-1.docker.io"
    host: str  # host[:port]: the key for credentials and cached tokens
    mirror: bool = False

    def __str__(self) -> str:
        """How error messages name it: mirrors by URL (a path or scheme may be the problem)."""
        return f"mirror {self.url}" if self.mirror else f"registry {self.url}"


def registry_host(domain: str) -> str:
    return "registry-1.docker.io" if domain == DOCKER_HUB else domain


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].partition("]")[0]
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        return host.rpartition(":")[0] if ":" in host else host


def is_loopback(host: str) -> bool:
    name = _hostname(host).lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_insecure(host: str, settings: RegistrySettings) -> bool:
    """Plain HTTP: loopback always, otherwise only hosts the operator listed (with or without port)."""
    return is_loopback(host) or host in settings.insecure or _hostname(host) in settings.insecure


def endpoints(domain: str, settings: RegistrySettings, *, mirrors: bool = True) -> list[Endpoint]:
    """Where to reach ``domain``: its mirrors in the configured order, then the registry itself."""
    found: list[Endpoint] = []
    for raw in settings.mirrors.get(domain, []) if mirrors else []:
        url = raw.strip().rstrip("/").removesuffix("/v2")
        if "://" not in url:
            url = ("http://" if is_insecure(url.split("/")[0], settings) else "https://") + url
        found.append(Endpoint(url=url, host=urlsplit(url).netloc, mirror=True))
    host = registry_host(domain)
    scheme = "http" if is_insecure(domain, settings) or is_insecure(host, settings) else "https"
    found.append(Endpoint(url=f"{scheme}://{host}", host=host))
    return found


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not trusted ({exc.certificate_error}); list the host as insecure only if it " \
               "really serves plain HTTP"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    return str(exc) or type(exc).__name__


async def _error_detail(resp: aiohttp.ClientResponse) -> str:
    """The registry's own explanation (its JSON ``errors``), else the start of the body."""
    try:
        text = (await resp.read())[:2000].decode(errors="replace")
    except (aiohttp.ClientError, TimeoutError):
        return f"HTTP {resp.status}"
    try:
        errors = json.loads(text).get("errors") or []
        detail = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, AttributeError):
        detail = text.strip()[:200]
    return f"HTTP {resp.status}" + (f" ({detail})" if detail else "")


class RegistryClient:
    def __init__(self, settings: RegistrySettings, docker_config: Path | None = None, *,
                 connect_timeout: float = 15.0, read_timeout: float = 120.0) -> None:
        self._settings = settings
        self._config = DockerConfig(docker_config)
        self._tokens = TokenCache()
        self._basic: set[str] = set()  # hosts that asked for basic auth
        self._served_by: dict[str, Endpoint] = {}  # repository -> endpoint that gave its manifest
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # auto_decompress off: a Content-Encoding from a CDN must not change what we digest
            self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False, trust_env=True,
                                                  headers={"User-Agent": f"faasd-py/{__version__}"})
        return self._session

    # --- pull ------------------------------------------------------------------------------

    async def resolve(self, ref: Reference) -> tuple[Descriptor, bytes]:
        """The manifest or index ``ref`` points to, verified against its digest."""
        ep, resp = await self._pull(ref, "GET", f"/manifests/{ref.object}", {"Accept": oci.MANIFEST_ACCEPT},
                                    lambda ep: self._manifest_missing(ref, ep))
        parts: list[bytes] = []
        try:
            async for chunk in resp.content.iter_chunked(CHUNK):
                parts.append(chunk)
                if sum(map(len, parts)) > MAX_MANIFEST:
                    raise ImageError(f"{ep}: manifest of {ref} is larger than {MAX_MANIFEST} bytes")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ImageError(f"{ep}: reading manifest of {ref}: {_describe(exc)}") from exc
        finally:
            resp.release()
        body = b"".join(parts)
        what = f"manifest of {ref} from {ep}"
        if ref.digest:
            oci.verify_digest(body, ref.digest, what)
            digest = ref.digest
        else:
            digest = oci.sha256_digest(body)
            claimed = resp.headers.get("Docker-Content-Digest", "")
            if claimed.startswith("sha256:") and claimed != digest:
                raise ImageError(f"{what}: content does not match the digest the registry sent ({claimed})")
        media_type = oci.detect_media_type(body, resp.headers.get("Content-Type", ""), what)
        self._served_by[ref.name] = ep
        return Descriptor(media_type, digest, len(body)), body

    async def head(self, ref: Reference) -> Descriptor | None:
        """What ``ref`` points to without downloading it (HEAD does not count against Hub limits).

        None when the registry does not say which digest it serves; then use :meth:`resolve`.
        """
        _, resp = await self._pull(ref, "HEAD", f"/manifests/{ref.object}", {"Accept": oci.MANIFEST_ACCEPT},
                                    lambda ep: self._manifest_missing(ref, ep))
        resp.release()
        digest = resp.headers.get("Docker-Content-Digest", "")
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if not digest.startswith("sha256:") or media_type not in oci.INDEX_TYPES | oci.MANIFEST_TYPES:
            return None
        return Descriptor(media_type, digest, int(resp.headers.get("Content-Length") or 0))

    async def fetch_blob(self, ref: Reference, digest: str, size: int | None = None) -> AsyncGenerator[bytes, None]:
        """Stream a blob; raises ImageError at the end if its digest or size is wrong."""
        algorithm = digest.partition(":")[0]
        if algorithm not in hashlib.algorithms_available:
            raise ImageError(f"blob {digest} of {ref}: unsupported digest algorithm")
        ep, resp = await self._pull(ref, "GET", f"/blobs/{digest}", {},
                                    lambda ep: ImageError(f"{ep}: blob {digest} of {ref} is missing"))
        hasher, received = hashlib.new(algorithm), 0
        try:
            async for chunk in resp.content.iter_chunked(CHUNK):
                hasher.update(chunk)
                received += len(chunk)
                if size is not None and received > size:
                    raise ImageError(f"{ep}: blob {digest} of {ref.name} is larger than its descriptor says")
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ImageError(f"{ep}: download of {digest} ({ref.name}) broke off: "
                             f"{_describe(exc)}") from exc
        finally:
            resp.release()
        if f"{algorithm}:{hasher.hexdigest()}" != digest or (size is not None and received != size):
            raise ImageError(f"{ep}: blob {digest} of {ref.name} does not match its digest or size")

    async def fetch_blob_bytes(self, ref: Reference, digest: str, size: int | None = None) -> bytes:
        return b"".join([chunk async for chunk in self.fetch_blob(ref, digest, size)])

    def _manifest_missing(self, ref: Reference, ep: Endpoint) -> ImageError:
        return ImageNotFound(f"image {ref} not found on {ep}")

    async def _pull(self, ref: Reference, method: str, path: str, headers: dict[str, str],
                    missing: Callable[[Endpoint], ImageError]) -> tuple[Endpoint, aiohttp.ClientResponse]:
        """A 2xx response from the first endpoint (mirrors, then upstream) that has the object."""
        candidates = endpoints(ref.domain, self._settings)
        served = self._served_by.get(ref.name)
        if served in candidates and served is not None:
            candidates.remove(served)
            candidates.insert(0, served)
        failures: list[ImageError] = []
        for ep in candidates:
            try:
                resp = await self._request(ep, method, f"/v2/{ref.path}{path}", repo=ref.path, headers=headers)
                if 200 <= resp.status < 300:
                    return ep, resp
                if resp.status == 404:
                    resp.release()
                    raise missing(ep)
                raise ImageError(f"{ep}: {method} {ref.name}{path}: {await _error_detail(resp)}")
            except ImageError as exc:
                failures.append(exc)
        if len(failures) == 1:
            raise failures[0]
        kind = next((k for k in (ImageNotFound, RegistryAuthError) if any(isinstance(f, k) for f in failures)),
                    ImageError)
        raise kind("; ".join(f.message for f in failures))

    # --- push ------------------------------------------------------------------------------

    def _push_endpoint(self, ref: Reference) -> Endpoint:
        return endpoints(ref.domain, self._settings, mirrors=False)[0]

    async def blob_exists(self, ref: Reference, digest: str) -> bool:
        ep = self._push_endpoint(ref)
        resp = await self._request(ep, "HEAD", f"/v2/{ref.path}/blobs/{digest}", repo=ref.path, push=True)
        resp.release()
        if resp.status in (200, 404):
            return resp.status == 200
        raise ImageError(f"{ep}: checking blob {digest} of {ref.name}: HTTP {resp.status}")

    async def push_blob(self, ref: Reference, digest: str, data: bytes | Path | AsyncIterable[bytes],
                        size: int | None = None) -> None:
        """Monolithic upload: POST opens an upload session, one PUT sends the blob and its digest.

        ``data`` is streamed, never held whole in memory, unless it is bytes already: a Path is
        read in chunks (after checking it against ``digest`` and ``size``), an async iterator is
        sent as it comes (the registry checks the digest; pass ``size`` to avoid a chunked body).
        """
        what = f"blob for {ref.name}"
        body: Callable[[], bytes | AsyncIterable[bytes]]
        if isinstance(data, bytes):
            oci.verify_digest(data, digest, what)
            size = len(data)
            body = lambda: data  # noqa: E731 - the same bytes on every attempt
        elif isinstance(data, Path):
            size = await asyncio.to_thread(_check_file, data, digest, size, what)
            path, length = data, size
            body = lambda: _file_chunks(path, length)  # noqa: E731 - a fresh reader on every attempt
        else:
            body = _once_only(data, digest)
        ep = self._push_endpoint(ref)
        resp = await self._request(ep, "POST", f"/v2/{ref.path}/blobs/uploads/", repo=ref.path, push=True)
        if resp.status == 201:
            resp.release()
            return
        if resp.status != 202 or "Location" not in resp.headers:
            raise ImageError(f"{ep}: starting upload to {ref.name}: {await _error_detail(resp)}")
        resp.release()
        url = urljoin(ep.url + "/", resp.headers["Location"])
        url += ("&" if "?" in url else "?") + urlencode({"digest": digest})
        headers = {"Content-Type": "application/octet-stream"}
        if size is not None:
            headers["Content-Length"] = str(size)
        resp = await self._request(ep, "PUT", "", url=url, repo=ref.path, push=True, data=body, headers=headers)
        if resp.status != 201:
            raise ImageError(f"{ep}: uploading {digest} to {ref.name}: {await _error_detail(resp)}")
        resp.release()

    async def put_manifest(self, ref: Reference, media_type: str, body: bytes) -> str:
        """Store a manifest or index under ``ref``'s tag (or digest); return its digest."""
        digest = oci.sha256_digest(body)
        if ref.digest and ref.digest != digest:
            raise ImageError(f"manifest for {ref} has digest {digest}, not the one in the reference")
        ep = self._push_endpoint(ref)
        resp = await self._request(ep, "PUT", f"/v2/{ref.path}/manifests/{ref.tag or ref.digest}", repo=ref.path,
                                   push=True, data=body, headers={"Content-Type": media_type})
        if resp.status != 201:
            raise ImageError(f"{ep}: pushing manifest {ref}: {await _error_detail(resp)}")
        resp.release()
        claimed = resp.headers.get("Docker-Content-Digest", digest)
        if claimed != digest:
            raise ImageError(f"{ep}: stored manifest {ref} as {claimed}, expected {digest}")
        return digest

    async def push_layout(self, layout_dir: Path, ref: str | Reference) -> str:
        """Push the image of an OCI image layout; return the digest now tagged in the registry.

        With one manifest in index.json that manifest is pushed; with several, the one whose
        ref.name annotation equals the tag, else the whole index.
        """
        target = parse_reference(ref) if isinstance(ref, str) else ref
        index_body = await asyncio.to_thread((layout_dir / "index.json").read_bytes)
        entries = oci.parse_index(index_body, f"{layout_dir}/index.json")
        named = [d for d in entries if d.annotations.get(oci.ANNOTATION_REF_NAME) == target.tag]
        top = entries[0] if len(entries) == 1 else named[0] if len(named) == 1 else None
        if top is None:
            return await self._push_tree(layout_dir, target, index_body, top=True)
        body = await _read_layout_blob(layout_dir, top.digest)
        return await self._push_tree(layout_dir, target, body, top=True)

    async def _push_tree(self, layout_dir: Path, ref: Reference, body: bytes, *, top: bool) -> str:
        digest = oci.sha256_digest(body)
        what = f"{layout_dir} manifest {digest}"
        media_type = oci.detect_media_type(body, "", what)
        if media_type in oci.INDEX_TYPES:
            for child in oci.parse_index(body, what):
                await self._push_tree(layout_dir, ref, await _read_layout_blob(layout_dir, child.digest), top=False)
        else:
            manifest = oci.parse_manifest(body, what)
            for blob in (manifest.config, *manifest.layers):
                if not await self.blob_exists(ref, blob.digest):
                    await self.push_blob(ref, blob.digest, _layout_blob_path(layout_dir, blob.digest), blob.size)
        dest = ref if top else dataclasses.replace(ref, tag=None, digest=digest)
        return await self.put_manifest(dest, media_type, body)

    # --- HTTP with auth --------------------------------------------------------------------

    async def _request(self, ep: Endpoint, method: str, path: str, *, repo: str, push: bool = False,
                       headers: dict[str, str] | None = None,
                       data: bytes | Callable[[], bytes | AsyncIterable[bytes]] | None = None,
                       url: str | None = None) -> aiohttp.ClientResponse:
        """Send, answer one auth challenge and send again; the caller releases the response.
        A callable ``data`` gives the body of each attempt (a stream can be sent only once)."""
        scope = f"repository:{repo}:{'pull,push' if push else 'pull'}"
        target = yarl.URL(url or ep.url + path, encoded=True)
        for attempt in (1, 2):
            sent = dict(headers or {})
            auth = await self._auth_header(ep, scope)
            if auth:
                sent["Authorization"] = auth
            try:
                body = data() if callable(data) else data
                resp = await self._http().request(method, target, headers=sent, data=body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ImageError(f"{ep}: {method} {target.path}: {_describe(exc)}") from exc
            if resp.status not in (401, 403):
                return resp
            resp.release()
            challenge = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
            if resp.status == 403 or attempt == 2 or challenge is None:
                raise await self._denied(ep, repo, push, resp.status)
            self._tokens.drop(ep.host, scope)
            await self._authenticate(ep, scope, challenge)
        raise AssertionError("unreachable")

    async def _denied(self, ep: Endpoint, repo: str, push: bool, status: int) -> ImageError:
        creds = await self._config.lookup(ep.host)
        if creds:
            self._config.forget(ep.host)  # a helper may have a fresher answer next time
        action = "push to" if push else "pull"
        if creds is None and not push:
            # Docker Hub answers 401 for repositories that do not exist, so say both
            return ImageNotFound(f"{ep}: pull access denied for {repo}: the repository does not "
                                 "exist or needs credentials (none are configured for this registry)")
        who = "the configured credentials" if creds else "anonymous access"
        return RegistryAuthError(f"{ep}: {action} {repo} denied for {who} (HTTP {status})")

    async def _auth_header(self, ep: Endpoint, scope: str) -> str | None:
        token = self._tokens.get(ep.host, scope)
        if token:
            return f"Bearer {token}"
        if ep.host in self._basic:
            creds = await self._config.lookup(ep.host)
            return creds.basic_header() if creds else None
        return None

    async def _authenticate(self, ep: Endpoint, scope: str, challenge: Challenge) -> None:
        creds = await self._config.lookup(ep.host)
        if challenge.scheme == "basic":
            if creds is None or creds.basic_header() is None:
                raise RegistryAuthError(f"{ep} needs a username and password; none are configured "
                                        "for it in the docker config.json")
            self._basic.add(ep.host)
            return
        realm = challenge.params.get("realm", "")
        realm_url = yarl.URL(realm)
        if realm_url.scheme not in ("http", "https") or not realm_url.host:
            raise RegistryAuthError(f"{ep} sent an unusable token realm {realm!r}")
        if creds and realm_url.scheme != "https" and not is_insecure(urlsplit(realm).netloc, self._settings):
            raise RegistryAuthError(f"{ep}: refusing to send credentials to {realm} over plain HTTP")
        scopes = [scope]
        if not _covers(scope, challenge.params.get("scope", "")):
            scopes.append(challenge.params["scope"])
        service = challenge.params.get("service", "")
        try:
            if creds and creds.identity_token:
                form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token, "service": service,
                        "scope": " ".join(scopes), "client_id": "faasd-py"}
                resp = await self._http().post(realm_url, data=form)
            else:
                query: list[tuple[str, str]] = [("service", service)] if service else []
                query += [("scope", s) for s in scopes]
                basic = creds.basic_header() if creds else None
                resp = await self._http().get(realm_url.with_query(query),
                                              headers={"Authorization": basic} if basic else None)
            async with resp:
                if resp.status in (401, 403):
                    self._config.forget(ep.host)
                    who = "the configured credentials" if creds else "anonymous access"
                    raise RegistryAuthError(f"{ep}: token service {realm_url.host} rejected {who} "
                                            f"(HTTP {resp.status})")
                if resp.status != 200:
                    raise ImageError(f"{ep}: token service {realm}: {await _error_detail(resp)}")
                payload: Any = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ImageError(f"{ep}: token service {realm}: {_describe(exc)}") from exc
        token = payload.get("token") or payload.get("access_token") if isinstance(payload, dict) else None
        if not isinstance(token, str) or not token:
            raise ImageError(f"{ep}: token service {realm} returned no token")
        try:
            expires = float(payload.get("expires_in") or 60)
        except (TypeError, ValueError):
            expires = 60.0
        self._tokens.put(ep.host, scope, token, expires)


def _covers(scope: str, other: str) -> bool:
    """Does ``scope`` (repository:name:actions) already grant everything ``other`` asks for?"""
    if not other:
        return True
    mine, theirs = scope.rsplit(":", 1), other.rsplit(":", 1)
    return len(theirs) == 2 and mine[0] == theirs[0] and set(theirs[1].split(",")) <= set(mine[1].split(","))


def _layout_blob_path(layout_dir: Path, digest: str) -> Path:
    algorithm, _, hex_part = digest.partition(":")
    if not algorithm.isalnum() or not hex_part.isalnum():
        raise ImageError(f"{layout_dir}: invalid digest {digest!r}")
    return layout_dir / "blobs" / algorithm / hex_part


async def _read_layout_blob(layout_dir: Path, digest: str) -> bytes:
    path = _layout_blob_path(layout_dir, digest)
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise ImageError(f"{layout_dir}: blob {digest} is missing ({exc.strerror})") from exc
    oci.verify_digest(data, digest, f"{layout_dir} blob {digest}")
    return data


def _check_file(path: Path, digest: str, size: int | None, what: str) -> int:
    """Hashes the file in chunks; returns its size, raises ImageError unless it matches."""
    algorithm = digest.partition(":")[0]
    if algorithm not in hashlib.algorithms_available:
        raise ImageError(f"{what}: unsupported digest algorithm in {digest}")
    hasher, total = hashlib.new(algorithm), 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                hasher.update(chunk)
                total += len(chunk)
    except OSError as exc:
        raise ImageError(f"{what}: cannot read {path} ({exc.strerror})") from exc
    if f"{algorithm}:{hasher.hexdigest()}" != digest or (size is not None and total != size):
        raise ImageError(f"{what}: {path} does not match digest {digest}" + (f" and size {size}" if size else ""))
    return total


async def _file_chunks(path: Path, size: int) -> AsyncGenerator[bytes, None]:
    """The file's ``size`` bytes in chunks. The file is closed before the last chunk is handed
    out: with a Content-Length aiohttp stops asking after it, so a ``finally`` alone would wait
    for the generator to be garbage collected."""
    f = await asyncio.to_thread(path.open, "rb")
    try:
        remaining = size
        while remaining > 0:
            chunk = await asyncio.to_thread(f.read, min(CHUNK, remaining))
            if not chunk:
                raise ImageError(f"{path} became shorter while it was being uploaded")
            remaining -= len(chunk)
            if remaining == 0:
                f.close()
            yield chunk
    finally:
        f.close()  # idempotent; reached on errors and cancellation


def _once_only(stream: AsyncIterable[bytes], digest: str) -> Callable[[], AsyncIterable[bytes]]:
    """A stream as a body factory: the second attempt (after an auth challenge) cannot replay it."""
    used = False

    def body() -> AsyncIterable[bytes]:
        nonlocal used
        if used:
            raise ImageError(f"blob {digest}: the registry asked for credentials after the stream was sent; "
                             "push it from a file or bytes to allow a retry")
        used = True
        return stream

    return body
