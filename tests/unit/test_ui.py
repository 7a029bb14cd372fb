"""The portal at /ui/: served behind basic auth, self-contained, and calling only routes that exist.

The browser side itself is checked by hand with headless Chromium (docs/ui.md); these tests pin
what can break without a browser: the files, their types, the auth, and the API paths app.js uses.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from faasd_py.gateway.app import UI_DIR, build_app
from faasd_py.gateway.auth import Credentials
from tests.fakes import FakeProvider
from tests.unit.gateway_support import AUTH, basic, make_settings, running_gateway

APP_JS = (UI_DIR / "app.js").read_text()
INDEX = (UI_DIR / "index.html").read_text()
STYLE = (UI_DIR / "style.css").read_text()

# api("GET", `/system/function/${enc(name)}?namespace=${enc(ns)}`) and call(method, `/function/...`)
CALL = re.compile(r"""\b(?:api|call)\(\s*(?:"([A-Z]+)"|([A-Za-z_]\w*))\s*,\s*([`"'])(/[^`"']*)\3""")
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")


def api_calls() -> list[tuple[str, str]]:
    """(method, path) for every request app.js makes; a method held in a variable counts as every method."""
    calls: list[tuple[str, str]] = []
    for method, variable, _, raw in CALL.findall(APP_JS):
        path = re.sub(r"\$\{[^}]*\}", "x1", raw).split("?")[0]
        calls.extend((m, path) for m in ((method,) if method else METHODS))
        assert method or variable
    return calls


def test_app_js_requests_are_all_found_by_the_parser() -> None:
    """Every API path literal in app.js sits in an api()/call() the parser sees, so none escapes the check."""
    literals = re.findall(r"""[`"'](/(?:system|function)/?[^`"']*)[`"']""", APP_JS)
    parsed = [raw for *_, raw in CALL.findall(APP_JS)]
    assert len(literals) >= 12
    assert sorted(literals) == sorted(parsed)


async def test_every_api_path_app_js_calls_is_routed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    app = build_app(FakeProvider(), settings, Credentials.load(settings))
    seen = set()
    for method, path in api_calls():
        match = await app.router.resolve(make_mocked_request(method, path, app=app))
        assert match.http_exception is None, f"app.js calls {method} {path}, which the gateway does not route"
        seen.add((method, match.route.resource.canonical if match.route.resource else ""))
    expected = {
        ("GET", "/system/namespaces"),
        ("GET", "/system/info"),
        ("GET", "/system/functions"),
        ("POST", "/system/functions"),
        ("PUT", "/system/functions"),
        ("DELETE", "/system/functions"),
        ("GET", "/system/function/{name}"),
        ("POST", "/system/scale-function/{name}"),
        ("GET", "/system/logs"),
        ("GET", "/system/secrets"),
        ("POST", "/system/secrets"),
        ("DELETE", "/system/secrets"),
        ("POST", "/function/{name}"),
        ("GET", "/function/{name}"),
    }
    assert expected <= seen, expected - seen


async def test_ui_is_served_behind_basic_auth(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        resp = await gw.client.get("/ui/")
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="Restricted"'
        assert (await gw.client.get("/ui/", headers=basic(password="wrong"))).status == 401
        assert (await gw.client.get("/ui/app.js")).status == 401

        resp = await gw.client.get("/ui/", headers=AUTH)
        assert resp.status == 200
        assert resp.content_type == "text/html"
        html = await resp.text()
        assert '<script type="module" src="app.js"></script>' in html
        assert html == INDEX

        root = await gw.client.get("/", allow_redirects=False)
        assert root.status == 307 and root.headers["Location"] == "/ui/"


@pytest.mark.parametrize(
    ("name", "types"),
    [
        ("app.js", {"text/javascript", "application/javascript"}),  # module scripts need a JS MIME type
        ("style.css", {"text/css"}),
        ("logo.svg", {"image/svg+xml"}),
        ("index.html", {"text/html"}),
    ],
)
async def test_assets_have_the_right_content_type(tmp_path: Path, name: str, types: set[str]) -> None:
    async with running_gateway(tmp_path) as gw:
        resp = await gw.client.get(f"/ui/{name}", headers=AUTH)
        assert resp.status == 200
        assert resp.content_type in types
        assert await resp.read() == (UI_DIR / name).read_bytes()


async def test_every_file_index_html_references_is_served(tmp_path: Path) -> None:
    refs = set(re.findall(r"""(?:src|href)="([^"#]+)\"""", INDEX))
    assert {"app.js", "style.css", "logo.svg"} <= refs
    async with running_gateway(tmp_path) as gw:
        for ref in refs:
            assert not re.match(r"^([a-z]+:)?//", ref), f"{ref}: the portal must not load anything from elsewhere"
            resp = await gw.client.get(f"/ui/{ref}", headers=AUTH)
            assert resp.status == 200, ref


def test_no_markup_injection_sinks_and_no_outside_resources() -> None:
    """API data reaches the page only as text; nothing is fetched from outside the gateway."""
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in APP_JS, sink
    assert not re.search(r"<script>[^<]", INDEX), "no inline scripts: the CSP forbids them"
    assert "script-src 'self'" in INDEX
    for text in (APP_JS, INDEX, STYLE):
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text)
    assert "@import" not in STYLE and "url(" not in STYLE


async def test_bodies_the_ui_sends_are_accepted(tmp_path: Path) -> None:
    """The exact JSON shapes app.js builds for deploy, scale, delete and secrets (empty fields included)."""
    async with running_gateway(tmp_path) as gw:
        deploy = {
            "service": "ui-fn", "image": "ghcr.io/openfaas/alpine:latest", "namespace": "openfaas-fn",
            "envProcess": "", "envVars": {"A": "1"}, "labels": {}, "annotations": {}, "secrets": [],
            "readOnlyRootFilesystem": False, "limits": {"memory": "64Mi"},
        }
        assert (await gw.client.post("/system/functions", json=deploy, headers=AUTH)).status == 202
        redeploy = {**deploy, "constraints": None, "requests": None, "image": "x/y:2"}
        assert (await gw.client.put("/system/functions", json=redeploy, headers=AUTH)).status == 202
        again = await gw.client.post("/system/functions", json=deploy, headers=AUTH)
        assert again.status == 409 and "already exists" in await again.text()  # shown in the dialog as is

        scale = {"serviceName": "ui-fn", "namespace": "openfaas-fn", "replicas": 0}
        assert (await gw.client.post("/system/scale-function/ui-fn", json=scale, headers=AUTH)).status == 202
        assert gw.provider.fake_functions.scaled[-1].replicas == 0

        secret = {"name": "api-key", "namespace": "openfaas-fn", "value": "s3cr3t"}
        assert (await gw.client.post("/system/secrets", json=secret, headers=AUTH)).status == 201
        listed = await (await gw.client.get("/system/secrets?namespace=openfaas-fn", headers=AUTH)).json()
        assert listed == [{"name": "api-key", "namespace": "openfaas-fn"}]
        gone = {"name": "api-key", "namespace": "openfaas-fn"}
        assert (await gw.client.delete("/system/secrets", json=gone, headers=AUTH)).status == 202

        logs = await gw.client.get(
            "/system/logs?name=ui-fn&namespace=openfaas-fn&tail=100&follow=false", headers=AUTH
        )
        assert logs.status == 200 and logs.content_type == "application/x-ndjson"

        delete = {"functionName": "ui-fn", "namespace": "openfaas-fn"}
        assert (await gw.client.delete("/system/functions", json=delete, headers=AUTH)).status == 202
        assert (await gw.client.get("/system/function/ui-fn?namespace=openfaas-fn", headers=AUTH)).status == 404


def test_app_js_builds_those_bodies() -> None:
    """Ties the shapes above to the source, so a rename in app.js fails here and not in a browser."""
    for fragment in (
        "{ functionName: name, namespace: ns }",
        "{ serviceName: name, namespace: ns, replicas: target }",
        "{ name, namespace: state.ns, value }",
        "{ name, namespace: ns }",
        "&tail=${LOG_TAIL}&follow=${follow}",
        "readOnlyRootFilesystem:",
    ):
        assert fragment in APP_JS, fragment


def test_only_the_portal_files_are_shipped() -> None:
    """The handler serves every file in UI_DIR: no stray editor backups or notes."""
    assert sorted(p.name for p in UI_DIR.iterdir()) == ["app.js", "index.html", "logo.svg", "style.css"]
