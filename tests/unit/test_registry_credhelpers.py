"""Registry credentials from docker credential helpers (``credsStore`` / ``credHelpers``).

The helpers are small shell scripts written into a tmp dir that is put first on PATH, so the
real protocol runs: a subprocess, the server URL on stdin, JSON or an error text on stdout.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path

import pytest

from faasd_py.errors import RegistryAuthError
from faasd_py.runtime.registry_auth import (
    HUB_SERVER_URL,
    Credentials,
    DockerConfig,
    helper_server_url,
    load_docker_config,
    run_credential_helper,
)

HOST = "127.0.0.1:5000"
NOT_FOUND = "credentials not found in native keychain"


def write_helper(bindir: Path, name: str, answers: dict[str, dict[str, str]] | None = None,
                 body: str | None = None) -> Path:
    """``docker-credential-<name>``: answers the given server URLs, "not found" for others.

    Every ``get`` appends ``[<stdin>]`` to ``<script>.calls`` (exactly what it received, newline
    or not), so tests can see what was asked and how often. ``body`` replaces the answering part.
    """
    cases = "".join(f"  '{url}') printf '%s' '{json.dumps(answer)}' ;;\n" for url, answer in (answers or {}).items())
    assert "'" not in "".join(json.dumps(a) + u for u, a in (answers or {}).items())
    script = bindir / f"docker-credential-{name}"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || { echo "unexpected action $1"; exit 3; }\n'
        'url=$(cat; echo x); url=${url%x}\n'  # keeps a trailing newline, if one was sent
        "printf '[%s]\\n' \"$url\" >> \"$0.calls\"\n"
        + (body if body is not None else
           f'case "$url" in\n{cases}  *) echo "{NOT_FOUND}"; exit 1 ;;\nesac\n'))
    script.chmod(0o755)
    return script


def calls(script: Path) -> list[str]:
    """What the helper was asked, one ``[server URL]`` per run."""
    return written(Path(f"{script}.calls")).splitlines()


def written(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.fixture
def bindir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setenv("PATH", f"{path}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}")
    return path


def config(tmp_path: Path, data: dict[str, object], **kwargs: float) -> DockerConfig:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return DockerConfig(path, **kwargs)


# --- the helper protocol ---------------------------------------------------------------------


async def test_found_sends_the_host_without_newline(bindir: Path, tmp_path: Path) -> None:
    helper = write_helper(bindir, "fake", {HOST: {"ServerURL": HOST, "Username": "alice", "Secret": "s3cret"}})
    cfg = config(tmp_path, {"credsStore": "fake"})
    assert await cfg.lookup(HOST) == Credentials("alice", "s3cret")
    assert calls(helper) == [f"[{HOST}]"]


async def test_not_found_is_anonymous_and_auths_are_not_consulted(bindir: Path, tmp_path: Path) -> None:
    helper = write_helper(bindir, "fake", {})
    cfg = config(tmp_path, {"credsStore": "fake", "auths": {HOST: {"username": "stale", "password": "old"}}})
    assert await cfg.lookup(HOST) is None
    assert calls(helper) == [f"[{HOST}]"]
    assert await run_credential_helper("fake", "ghcr.io") is None


async def test_failing_helper_is_an_auth_error_naming_it(bindir: Path, tmp_path: Path) -> None:
    write_helper(bindir, "fake", body='echo "pass store is uninitialized"; exit 1\n')
    cfg = config(tmp_path, {"credsStore": "fake"})
    with pytest.raises(RegistryAuthError, match=r"credential helper docker-credential-fake failed for "
                                                rf"{HOST} \(exit status 1\): pass store is uninitialized") as exc:
        await cfg.lookup(HOST)
    assert exc.value.status == 400
    write_helper(bindir, "fake", body='echo "gpg: decryption failed" >&2; exit 4\n')
    with pytest.raises(RegistryAuthError, match=r"\(exit status 4\): gpg: decryption failed"):
        await run_credential_helper("fake", HOST)


async def test_missing_helper_names_it_and_the_path(bindir: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path, {"credsStore": "nothere"})
    with pytest.raises(RegistryAuthError, match=rf"docker-credential-nothere \(for {HOST}\) is not on the "
                                                rf"daemon's PATH \({re.escape(str(bindir))}"):
        await cfg.lookup(HOST)


async def test_hanging_helper_times_out_and_is_killed_with_its_children(bindir: Path, tmp_path: Path) -> None:
    # the sleep is a child of the shell and holds its stdout: killing the shell alone would not do
    helper = write_helper(bindir, "fake", body='echo $$ > "$0.pid"; sleep 30; echo "{}"\n')
    cfg = config(tmp_path, {"credsStore": "fake"}, helper_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(RegistryAuthError, match=rf"docker-credential-fake did not answer for {HOST} within 0.5 s"):
        await cfg.lookup(HOST)
    assert time.monotonic() - started < 5
    group = int(written(Path(f"{helper}.pid")))
    for _ in range(100):  # the killed sleep may take a moment to be reaped by init
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the helper's process group outlived the timeout")


@pytest.mark.parametrize("output", ["Username=alice Secret=topsecret", '["alice", "topsecret"]',
                                    '{"Username": "alice", "Secret": ["topsecret"]}'])
async def test_bad_json_is_an_error_that_does_not_quote_the_output(bindir: Path, tmp_path: Path,
                                                                   output: str) -> None:
    write_helper(bindir, "fake", body=f"printf '%s' '{output}'\n")
    cfg = config(tmp_path, {"credsStore": "fake"})
    with pytest.raises(RegistryAuthError, match=r"docker-credential-fake answered for .* JSON") as exc:
        await cfg.lookup(HOST)
    assert "topsecret" not in exc.value.message and exc.value.__cause__ is None


async def test_token_username_means_an_identity_token(bindir: Path, tmp_path: Path) -> None:
    write_helper(bindir, "fake", {HOST: {"ServerURL": HOST, "Username": "<token>", "Secret": "rt-123"}})
    creds = await config(tmp_path, {"credsStore": "fake"}).lookup(HOST)
    assert creds == Credentials(identity_token="rt-123")
    assert creds is not None and creds.basic_header() is None


def test_secrets_stay_out_of_repr() -> None:
    text = repr(Credentials("alice", "s3cret", "rt-123"))
    assert "alice" in text and "s3cret" not in text and "rt-123" not in text


# --- which source applies ----------------------------------------------------------------------


async def test_cred_helpers_beat_creds_store_and_auths(bindir: Path, tmp_path: Path) -> None:
    write_helper(bindir, "fake", {HOST: {"Username": "from-helper", "Secret": "h"}})
    store = write_helper(bindir, "store", {"ghcr.io": {"Username": "from-store", "Secret": "s"}})
    cfg = config(tmp_path, {
        "credsStore": "store",
        "credHelpers": {f"http://{HOST}": "fake", "quay.io": ""},
        "auths": {HOST: {"username": "inline", "password": "i"}, "quay.io": {"username": "q", "password": "q"}},
    })
    assert await cfg.lookup(HOST) == Credentials("from-helper", "h")
    assert await cfg.lookup("ghcr.io") == Credentials("from-store", "s")
    assert await cfg.lookup("quay.io") == Credentials("q", "q")  # listed with no helper: auths, as docker
    assert calls(store) == ["[ghcr.io]"]


async def test_auths_alone_still_work(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"auths": {HOST: {"username": "u", "password": "p"}}})
    assert await cfg.lookup(HOST) == Credentials("u", "p")
    assert await cfg.lookup("ghcr.io") is None


@pytest.mark.parametrize("key", ["docker.io", "https://index.docker.io/v1/", "registry-1.docker.io"])
async def test_docker_hub_is_asked_for_by_its_index_url(bindir: Path, tmp_path: Path, key: str) -> None:
    helper = write_helper(bindir, "fake", {HUB_SERVER_URL: {"Username": "hubuser", "Secret": "pat"}})
    cfg = config(tmp_path, {"credHelpers": {key: "fake"}})
    for host in ("registry-1.docker.io", "docker.io", "index.docker.io"):
        assert await cfg.lookup(host) == Credentials("hubuser", "pat")
    assert calls(helper) == [f"[{HUB_SERVER_URL}]"]  # one run: the three are one key
    assert helper_server_url("registry-1.docker.io") == HUB_SERVER_URL
    assert helper_server_url("https://GHCR.io/v2/") == "ghcr.io"


# --- caching ------------------------------------------------------------------------------------


async def test_answers_are_shared_briefly_then_asked_again(bindir: Path, tmp_path: Path) -> None:
    helper = write_helper(bindir, "fake", {HOST: {"Username": "u", "Secret": "p"}})
    cfg = config(tmp_path, {"credsStore": "fake"})
    found = await asyncio.gather(*(cfg.lookup(HOST) for _ in range(5)))  # concurrent fetches: one run
    assert found == [Credentials("u", "p")] * 5 and len(calls(helper)) == 1
    cfg.forget(HOST)  # e.g. the registry rejected it
    await cfg.lookup(HOST)
    assert len(calls(helper)) == 2
    short = config(tmp_path, {"credsStore": "fake"}, cache_seconds=0.0)
    await short.lookup(HOST)
    await short.lookup(HOST)
    assert len(calls(helper)) == 4


async def test_not_found_is_cached_but_failures_are_not(bindir: Path, tmp_path: Path) -> None:
    helper = write_helper(bindir, "fake", {})
    cfg = config(tmp_path, {"credsStore": "fake"})
    assert await cfg.lookup(HOST) is None and await cfg.lookup(HOST) is None
    assert len(calls(helper)) == 1
    broken = write_helper(bindir, "broken", body="exit 2\n")
    cfg = config(tmp_path, {"credsStore": "broken"})
    for _ in range(2):
        with pytest.raises(RegistryAuthError, match=r"docker-credential-broken failed .* \(exit status 2\)$"):
            await cfg.lookup(HOST)
    assert len(calls(broken)) == 2


async def test_a_changed_config_drops_cached_answers(bindir: Path, tmp_path: Path) -> None:
    write_helper(bindir, "fake", {HOST: {"Username": "first", "Secret": "1"}})
    write_helper(bindir, "other", {HOST: {"Username": "second", "Secret": "2"}})
    cfg = config(tmp_path, {"credsStore": "fake"})
    assert await cfg.lookup(HOST) == Credentials("first", "1")
    (tmp_path / "config.json").write_text(json.dumps({"credsStore": "other", "auths": {}}))
    assert await cfg.lookup(HOST) == Credentials("second", "2")
    (tmp_path / "config.json").unlink()
    assert await cfg.lookup(HOST) is None


@pytest.mark.parametrize(("data", "error"), [
    ({"credsStore": 5}, "credsStore is not a string"),
    ({"credsStore": "../../bin/sh"}, "credsStore '../../bin/sh' is not a helper name"),
    ({"credHelpers": ["fake"]}, "credHelpers is not an object"),
    ({"credHelpers": {"ghcr.io": "a b"}}, "credHelpers.ghcr.io 'a b' is not a helper name"),
])
def test_malformed_helper_settings(data: dict[str, object], error: str) -> None:
    with pytest.raises(RegistryAuthError, match=f"registry credentials c.json: {error}"):
        load_docker_config(json.dumps(data).encode(), "c.json")
