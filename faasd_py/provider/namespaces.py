"""Tenant namespaces: containerd namespaces labelled ``openfaas=1``, as in faasd and OpenFaaS.

``openfaas-fn`` is always valid (containerd creates it on first use). Every other namespace
must carry the label, so the daemon never deploys into containerd namespaces it does not own
(``moby``, ``k8s.io`` ...). The answer to "does this namespace exist" is cached because every
deploy and every listing asks it; a miss asks containerd again, so a namespace labelled with
``ctr`` behind our back is found too.

Deleting a namespace refuses while functions or secrets live in it (409 naming them), then
empties what containerd keeps there besides containers (the pulled images) and deletes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from faasd_py.errors import Conflict, ContainerdError, ContainerdNotFound, InvalidRequest, NotFound
from faasd_py.runtime.client import ContainerdClient
from faasd_py.runtime.purge import purge_namespace, remove_runtime_dirs
from faasd_py.types import DEFAULT_NAMESPACE, FunctionNamespace, validate_name

OPENFAAS_LABEL = "openfaas"


def _is_openfaas(labels: dict[str, str]) -> bool:
    return labels.get(OPENFAAS_LABEL) in ("1", "true")


class NamespaceService:
    def __init__(
        self,
        client: ContainerdClient,
        *,
        occupants: Callable[[str], list[str]] | None = None,
        snapshotters: Iterable[str] = ("overlayfs",),
    ) -> None:
        self._client = client
        self._snapshotters = tuple(snapshotters)
        self._cache: dict[str, dict[str, str]] | None = None
        self._deleting: set[str] = set()  # a deploy must not land in a namespace being emptied
        # tells what still lives in a namespace (functions, secrets) so delete can refuse with names
        self._occupants = occupants or (lambda ns: [])

    def set_occupants(self, occupants: Callable[[str], list[str]]) -> None:
        self._occupants = occupants

    async def _all(self, refresh: bool = False) -> dict[str, dict[str, str]]:
        if self._cache is None or refresh:
            listed = await self._client.list_namespaces()
            self._cache = {n: labels for n, labels in listed.items() if _is_openfaas(labels)}
        return self._cache

    async def list(self) -> list[str]:
        names = sorted(n for n in await self._all() if n != DEFAULT_NAMESPACE)
        return [DEFAULT_NAMESPACE, *names]

    async def exists(self, name: str) -> bool:
        if name == DEFAULT_NAMESPACE:
            return True
        if name in self._deleting:
            return False
        return name in await self._all() or name in await self._all(refresh=True)

    async def require(self, name: str) -> None:
        """Raise the 400 faas-provider gives for a deploy/list into an unknown namespace."""
        if not await self.exists(name):
            raise InvalidRequest(f"namespace {name!r} does not exist or is not an OpenFaaS namespace "
                                 "(create it with: faas-cli namespace create NAME)")

    async def get(self, name: str) -> FunctionNamespace:
        validate_name(name, "namespace")
        labels = (await self._all()).get(name)
        if labels is None:
            if name == DEFAULT_NAMESPACE:
                return FunctionNamespace(name=name, labels={OPENFAAS_LABEL: "1"})
            raise NotFound(f"namespace {name} not found")
        return FunctionNamespace(name=name, labels=_user_labels(labels), annotations=_annotations(labels))

    async def create(self, ns: FunctionNamespace) -> None:
        if not _is_openfaas(ns.labels):
            raise InvalidRequest("request does not have openfaas=1 label")
        existing = await self._client.list_namespaces()
        if ns.name in existing or ns.name == DEFAULT_NAMESPACE:
            raise Conflict(f"namespace {ns.name} already exists")
        await self._client.create_namespace(ns.name, _to_labels(ns))
        self._cache = None

    async def update(self, ns: FunctionNamespace) -> None:
        if not _is_openfaas(ns.labels):
            raise InvalidRequest("request does not have openfaas=1 label")
        if ns.name not in await self._all():
            raise NotFound(f"namespace {ns.name} not found")
        await self._client.set_namespace_labels(ns.name, _to_labels(ns))
        self._cache = None

    async def delete(self, name: str) -> None:
        validate_name(name, "namespace")
        if name == DEFAULT_NAMESPACE:
            raise InvalidRequest(f"namespace {name} is the default namespace and cannot be deleted")
        if name not in await self._all():
            raise NotFound(f"namespace {name} not found")
        if name in self._deleting:
            raise Conflict(f"namespace {name} is being deleted")
        left = self._occupants(name)
        if left:
            raise Conflict(f"namespace {name} is not empty: it still has {', '.join(left)}")
        self._deleting.add(name)
        try:
            await purge_namespace(self._client, name, self._snapshotters)
            await self._client.delete_namespace(name)
        except ContainerdNotFound as exc:
            raise NotFound(f"namespace {name} not found") from exc
        except ContainerdError as exc:
            if exc.code != "FAILED_PRECONDITION":
                raise
            # something landed in it meanwhile (a deploy that was already past its checks)
            raise Conflict(f"namespace {name} is not empty: {exc.message}") from exc
        finally:
            self._deleting.discard(name)
            self._cache = None
        remove_runtime_dirs(name)


# Annotations share containerd's single label map, under a prefix (as faasd stores them).
_ANNOTATION_PREFIX = "com.openfaas.annotations."


# containerd refuses a label whose key and value together exceed this (an INVALID_ARGUMENT that was a 500).
MAX_LABEL_BYTES = 4096


def _to_labels(ns: FunctionNamespace) -> dict[str, str]:
    labels = dict(ns.labels)
    labels.update({_ANNOTATION_PREFIX + k: v for k, v in ns.annotations.items()})
    for k, v in labels.items():
        if len(k.encode()) + len(v.encode()) > MAX_LABEL_BYTES:
            raise InvalidRequest(f"label or annotation {k!r} is too long: key and value may have "
                                 f"{MAX_LABEL_BYTES} bytes together")
    return labels


def _user_labels(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if not k.startswith(_ANNOTATION_PREFIX)}


def _annotations(labels: dict[str, str]) -> dict[str, str]:
    return {k[len(_ANNOTATION_PREFIX):]: v for k, v in labels.items() if k.startswith(_ANNOTATION_PREFIX)}
