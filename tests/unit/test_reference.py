from __future__ import annotations

import pytest

from faasd_py.errors import InvalidRequest
from faasd_py.runtime.reference import Reference, parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alpine", "docker.io/library/alpine:latest"),
        ("alpine:3.19", "docker.io/library/alpine:3.19"),
        ("user/img", "docker.io/user/img:latest"),
        ("functions/figlet:0.13.0", "docker.io/functions/figlet:0.13.0"),
        ("docker.io/alpine", "docker.io/library/alpine:latest"),
        ("index.docker.io/library/alpine:edge", "docker.io/library/alpine:edge"),
        ("host:5000/x/y:tag", "host:5000/x/y:tag"),
        ("host:5000/x/y", "host:5000/x/y:latest"),
        ("127.0.0.1:5000/faasd/busybox-httpd:0.1", "127.0.0.1:5000/faasd/busybox-httpd:0.1"),
        ("localhost/x", "localhost/x:latest"),
        ("localhost:5000/x", "localhost:5000/x:latest"),
        ("ghcr.io/openfaas/queue-worker:0.14.2", "ghcr.io/openfaas/queue-worker:0.14.2"),
        (f"alpine@{DIGEST}", f"docker.io/library/alpine@{DIGEST}"),
        (f"alpine:3@{DIGEST}", f"docker.io/library/alpine:3@{DIGEST}"),
        ("[::1]:5000/img", "[::1]:5000/img:latest"),
        ("a/b/c/d_e/f__g/h-i/j.k", "docker.io/a/b/c/d_e/f__g/h-i/j.k:latest"),
        ("localhost", "docker.io/library/localhost:latest"),
    ],
)
def test_normalisation(text: str, expected: str) -> None:
    assert str(parse_reference(text)) == expected
    # normalising twice changes nothing: the stored name parses to itself
    assert str(parse_reference(expected)) == expected


def test_fields() -> None:
    ref = parse_reference("host:5000/x/y:tag")
    assert ref == Reference(domain="host:5000", path="x/y", tag="tag", digest=None)
    assert ref.name == "host:5000/x/y"
    assert ref.object == "tag"
    pinned = parse_reference(f"x@{DIGEST}")
    assert pinned.tag is None and pinned.digest == DIGEST and pinned.object == DIGEST


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Alpine/Upper",  # uppercase first component is a host, and "Upper" is not a valid path
        "docker.io/Library/alpine",
        "alpine:",
        "alpine:-bad",
        "alpine@sha256:1234",
        "alpine@sha256:" + "g" * 64,
        "a//b",
        "a/b/",
        "/a",
        "alpine:" + "t" * 129,
        "has space",
        "x" * 256,
        "ab" * 32,  # an image ID, not a name
        "-leading/dash",
        "a__b___c",
    ],
)
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_reference(text)
    assert exc.value.status == 400
    assert "invalid image reference" in exc.value.message
