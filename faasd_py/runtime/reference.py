"""Image references, normalised the way docker and containerd do it.

``alpine`` and ``docker.io/library/alpine:latest`` must name the same containerd image record,
otherwise a function deployed with the short form would pull again and never find its image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from faasd_py.errors import InvalidRequest

DOCKER_HUB = "docker.io"
DEFAULT_TAG = "latest"
_MAX_NAME = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_HEX64 = re.compile(r"[a-f0-9]{64}")


@dataclass(frozen=True, slots=True)
class Reference:
    domain: str  # registry host[:port], "docker.io" for Docker Hub
    path: str  # repository path inside the registry, e.g. "library/alpine"
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """Repository without tag or digest: ``docker.io/library/alpine``."""
        return f"{self.domain}/{self.path}"

    @property
    def object(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def is_digest(text: str) -> bool:
    if not _DIGEST.fullmatch(text):
        return False
    algorithm, _, hex_part = text.partition(":")
    return algorithm != "sha256" or bool(_HEX64.fullmatch(hex_part))


def is_tag(text: str) -> bool:
    return bool(_TAG.fullmatch(text))


def parse_reference(text: str) -> Reference:
    """Parse and normalise ``[domain/]path[:tag][@digest]``; no tag and no digest means ``:latest``."""

    def invalid(why: str) -> InvalidRequest:
        return InvalidRequest(f"invalid image reference {text!r}: {why}")

    if not text:
        raise invalid("empty")
    remainder, at, digest = text.partition("@")
    if at and not is_digest(digest):
        raise invalid("bad digest")
    tag: str | None = None
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not is_tag(tag):
            raise invalid("bad tag")
    domain, path = _split_domain(remainder)
    if not _DOMAIN.fullmatch(domain):
        raise invalid("bad registry host")
    if path != path.lower():
        raise invalid("repository name must be lowercase")
    if not path or not all(_PATH_COMPONENT.fullmatch(c) for c in path.split("/")):
        raise invalid("bad repository name")
    if domain == DOCKER_HUB and _HEX64.fullmatch(path.removeprefix("library/")):
        raise invalid("a 64-character hex string is an image ID, not a name")
    if len(domain) + 1 + len(path) > _MAX_NAME:
        raise invalid(f"name longer than {_MAX_NAME} characters")
    if tag is None and not digest:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest or None)


def _split_domain(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    # the first component is a registry only if it looks like a host (docker's rule)
    if not slash or (not any(c in first for c in ".:") and first != "localhost" and first == first.lower()):
        domain, path = DOCKER_HUB, name
    else:
        domain, path = first, rest
    if domain == "index.docker.io":
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return domain, path
