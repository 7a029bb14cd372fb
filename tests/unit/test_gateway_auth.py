"""Basic auth on /system/* and /ui/, open invocations and health, as in the OpenFaaS gateway."""

from __future__ import annotations

import base64
import hmac
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faasd_py.errors import RuntimeFailure
from faasd_py.gateway.auth import Credentials
from tests.unit.gateway_support import AUTH, PASSWORD, USER, Gateway, basic, make_settings, running_gateway


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(tmp_path) as gateway:
        yield gateway


PROTECTED = [
    ("GET", "/system/functions"), ("POST", "/system/functions"), ("PUT", "/system/functions"),
    ("DELETE", "/system/functions"), ("GET", "/system/function/fn1"), ("POST", "/system/scale-function/fn1"),
    ("GET", "/system/info"), ("GET", "/system/secrets"), ("POST", "/system/secrets"), ("PUT", "/system/secrets"),
    ("DELETE", "/system/secrets"), ("GET", "/system/logs?name=fn1"), ("GET", "/system/namespaces"),
    ("GET", "/system/namespace/dev"), ("POST", "/system/namespace/"), ("PUT", "/system/namespace/dev"),
    ("DELETE", "/system/namespace/dev"), ("GET", "/ui/"),
]
BAD_HEADERS = [
    None,
    "Bearer",  # faas-cli with no login and no token (Go trims the trailing space)
    "Bearer some-token",
    basic(USER, "wrong")["Authorization"],
    basic("root", PASSWORD)["Authorization"],
    basic(USER, PASSWORD + "x")["Authorization"],
    "Basic !!!not-base64!!!",
    "Basic " + base64.b64encode(b"no-colon").decode(),
    "Digest " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_every_system_route_needs_credentials(gw: Gateway, method: str, path: str) -> None:
    resp = await gw.client.request(method, path)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="Restricted"'
    assert await resp.text() == "invalid credentials"


@pytest.mark.parametrize("header", BAD_HEADERS)
async def test_wrong_credentials_are_401(gw: Gateway, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    resp = await gw.client.get("/system/functions", headers=headers)
    assert resp.status == 401
    assert await resp.text() == "invalid credentials"


async def test_right_credentials_pass_and_scheme_is_case_insensitive(gw: Gateway) -> None:
    assert (await gw.client.get("/system/functions", headers=AUTH)).status == 200
    lower = {"Authorization": AUTH["Authorization"].replace("Basic", "basic")}
    assert (await gw.client.get("/system/functions", headers=lower)).status == 200


async def test_open_routes(gw: Gateway) -> None:
    assert (await gw.client.get("/healthz")).status == 200
    assert (await gw.client.get("/", allow_redirects=False)).status == 307
    # invocations are never gateway-authenticated: an unknown function is a 404 from resolve, not a 401
    resp = await gw.client.post("/function/nope.openfaas-fn", data=b"hi")
    assert resp.status == 404


async def test_both_parts_compared_in_constant_time(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # auth looks it up on the module at call time
    resp = await gw.client.get("/system/functions", headers=basic("root", "wrong"))
    assert resp.status == 401
    # the password is compared even though the user was already wrong
    assert calls == [(b"root", USER.encode()), (b"wrong", PASSWORD.encode())]


def test_credentials_load(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    creds = Credentials.load(settings)
    assert (creds.user, creds.password) == (USER, PASSWORD)  # trailing newline stripped
    assert PASSWORD not in repr(creds)
    settings.user_file.unlink()
    assert Credentials.load(settings).user == "admin"
    settings.password_file.write_text("  \n")
    with pytest.raises(RuntimeFailure, match="empty"):
        Credentials.load(settings)
    settings.password_file.unlink()
    with pytest.raises(RuntimeFailure, match="does not exist"):
        Credentials.load(settings)
    assert not settings.password_file.exists()  # nothing is created here
