"""An in-process OCI Distribution registry (aiohttp) on loopback, with switchable auth.

Just enough of the protocol for the client's tests: manifests (refusing OCI types to clients
that do not accept them, like the real registry), blobs, monolithic uploads, and a token
service with basic and refresh-token grants. Every request is recorded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer

OCI_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class FakeRegistry:
    auth: str = ""  # "", "bearer" or "basic"
    users: dict[str, str] = field(default_factory=dict)
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # identity token -> user
    anonymous: bool = True  # bearer: may an anonymous token pull?
    private: set[str] = field(default_factory=set)  # repositories anonymous tokens may not see
    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)  # blob digests served with a flipped byte
    requests: list[tuple[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, object]] = field(default_factory=list)
    server: TestServer | None = None
    _tokens: dict[str, tuple[str, set[str]]] = field(default_factory=dict)  # token -> (user, scopes)
    _uploads: dict[str, bytes] = field(default_factory=dict)

    @property
    def host(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.port}"

    async def start(self) -> FakeRegistry:
        app = web.Application()
        app.router.add_route("*", "/token", self._token)
        app.router.add_route("*", "/upload/{id}", self._upload)
        app.router.add_route("*", "/v2/{tail:.*}", self._v2)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    def put_manifest(self, repo: str, ref: str, media_type: str, body: bytes) -> str:
        self.manifests[(repo, ref)] = (media_type, body)
        self.manifests[(repo, _digest(body))] = (media_type, body)
        return _digest(body)

    def put_blob(self, data: bytes) -> str:
        self.blobs[_digest(data)] = data
        return _digest(data)

    # --- auth ------------------------------------------------------------------------------

    def _basic_user(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if self.users.get(user) == password else ""

    def _challenge(self, request: web.Request, scope: str) -> web.Response:
        if self.auth == "basic":
            value = 'Basic realm="fake"'
        else:
            value = f'Bearer realm="http://{self.host}/token",service="fake",scope="{scope}"'
        return web.json_response({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                                 status=401, headers={"WWW-Authenticate": value})

    def _authorised(self, request: web.Request, repo: str, action: str) -> bool:
        if self.auth == "basic":
            return bool(self._basic_user(request))
        if self.auth == "bearer":
            header = request.headers.get("Authorization", "")
            _, scopes = self._tokens.get(header.removeprefix("Bearer "), ("", set()))
            return f"{repo}:{action}" in scopes
        return True

    async def _token(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            form = await request.post()
            scopes = str(form.get("scope", "")).split()
            user = self.refresh_tokens.get(str(form.get("refresh_token", "")), "")
            self.token_requests.append({"method": "POST", "scopes": scopes, "grant": form.get("grant_type")})
            if not user:
                return web.json_response({"error": "invalid grant"}, status=401)
        else:
            scopes = request.query.getall("scope", [])
            basic = self._basic_user(request)
            self.token_requests.append({"method": "GET", "scopes": scopes, "user": basic,
                                        "service": request.query.get("service")})
            if basic == "":
                return web.json_response({"details": "incorrect username or password"}, status=401)
            user = basic or ""
        granted: set[str] = set()
        for scope in scopes:
            _, repo, actions = scope.split(":")
            for action in actions.split(","):
                if user or (self.anonymous and action == "pull" and repo not in self.private):
                    granted.add(f"{repo}:{action}")
        token = uuid.uuid4().hex
        self._tokens[token] = (user, granted)
        return web.json_response({"token": token, "expires_in": 300})

    # --- registry API ----------------------------------------------------------------------

    async def _v2(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        tail = request.match_info["tail"]
        if tail == "":
            return web.Response(status=200) if self.auth == "" else self._challenge(request, "")
        if m := re.fullmatch(r"(.+)/blobs/uploads/", tail):
            return await self._guarded(request, m.group(1), "push", self._start_upload)
        if m := re.fullmatch(r"(.+)/(manifests|blobs)/([^/]+)", tail):
            repo, kind, _ = m.groups()
            if kind == "manifests" and request.method == "PUT":
                return await self._guarded(request, repo, "push", self._put_manifest)
            handler = self._get_manifest if kind == "manifests" else self._get_blob
            return await self._guarded(request, repo, "pull", handler)
        return web.Response(status=404)

    async def _guarded(self, request: web.Request, repo: str, action: str, handler: object) -> web.StreamResponse:
        if not self._authorised(request, repo, action):
            scope = f"repository:{repo}:{'pull,push' if action == 'push' else 'pull'}"
            return self._challenge(request, scope)
        assert callable(handler)
        result: web.StreamResponse = await handler(request, repo)
        return result

    async def _get_manifest(self, request: web.Request, repo: str) -> web.Response:
        ref = request.path.rsplit("/", 1)[1]
        found = self.manifests.get((repo, ref))
        if found is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]},
                                     status=404)
        media_type, body = found
        if media_type in OCI_TYPES and media_type not in request.headers.get("Accept", ""):
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN",
                                                  "message": "OCI manifest found, but accept header does not "
                                                             "support OCI manifests"}]}, status=404)
        headers = {"Docker-Content-Digest": _digest(body), "Content-Type": media_type}
        if request.method == "HEAD":
            return web.Response(headers=headers | {"Content-Length": str(len(body))})
        return web.Response(body=body, headers=headers)

    async def _get_blob(self, request: web.Request, repo: str) -> web.Response:
        digest = request.path.rsplit("/", 1)[1]
        data = self.blobs.get(digest)
        if data is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}, status=404)
        if digest in self.corrupt:
            data = bytes([data[0] ^ 1]) + data[1:]
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(data)), "Docker-Content-Digest": digest})
        return web.Response(body=data, content_type="application/octet-stream")

    async def _start_upload(self, request: web.Request, repo: str) -> web.Response:
        upload = uuid.uuid4().hex
        self._uploads[upload] = b""
        # a query string in Location must survive; the real registry puts its state there
        return web.Response(status=202, headers={"Location": f"/upload/{upload}?_state=a%2Bb%3D%3D"})

    async def _upload(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path_qs))
        upload = request.match_info["id"]
        if upload not in self._uploads or request.query.get("_state") != "a+b==":
            return web.Response(status=400, text="bad upload state")
        data = await request.read()
        if _digest(data) != request.query.get("digest"):
            return web.json_response({"errors": [{"code": "DIGEST_INVALID", "message": "digest"}]}, status=400)
        self.blobs[_digest(data)] = data
        return web.Response(status=201, headers={"Docker-Content-Digest": _digest(data)})

    async def _put_manifest(self, request: web.Request, repo: str) -> web.Response:
        ref = request.path.rsplit("/", 1)[1]
        body = await request.read()
        media_type = request.headers.get("Content-Type", "")
        data = json.loads(body)
        for desc in [data.get("config"), *data.get("layers", [])]:
            if desc and desc["digest"] not in self.blobs:
                return web.json_response({"errors": [{"code": "BLOB_UNKNOWN", "message": desc["digest"]}]},
                                         status=400)
        for desc in data.get("manifests", []):
            if (repo, desc["digest"]) not in self.manifests:
                return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN", "message": desc["digest"]}]},
                                         status=400)
        digest = self.put_manifest(repo, ref, media_type, body)
        return web.Response(status=201, headers={"Docker-Content-Digest": digest})
