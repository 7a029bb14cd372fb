"""Domain errors shared by every layer.

Each error carries the HTTP status the gateway answers with, so lower layers can say *what*
went wrong without knowing about HTTP, and the gateway never has to guess (or leak a traceback).
"""

from __future__ import annotations


class FaasdError(Exception):
    """Base class: an error whose message is safe to show to an API client."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(FaasdError):
    status = 400


class Unauthorized(FaasdError):
    status = 401


class NotFound(FaasdError):
    status = 404


class Conflict(FaasdError):
    status = 409


class Unprocessable(FaasdError):
    status = 422


class PayloadTooLarge(FaasdError):
    status = 413


class RequestTimeout(FaasdError):
    """The client stopped sending its request body."""

    status = 408


class Unavailable(FaasdError):
    """The function exists but no replica can serve right now."""

    status = 503


class RuntimeFailure(FaasdError):
    """containerd, runc, CNI or a registry failed; the message says which and why."""

    status = 500


# --- errors raised by the runtime layer (containerd / registry) --------------------------------


class ContainerdError(RuntimeFailure):
    """A gRPC call to containerd failed; ``code`` is the gRPC status code name."""

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code


class ContainerdNotFound(ContainerdError, NotFound):
    status = 404


class ContainerdAlreadyExists(ContainerdError, Conflict):
    status = 409


class ContainerdUnavailable(ContainerdError):
    """The socket is not there or containerd does not answer."""

    status = 503


class ImageError(RuntimeFailure):
    """An image could not be resolved, pulled or unpacked."""

    status = 500


class ImageNotFound(ImageError):
    """The registry says the repository or tag does not exist (a client error on deploy)."""

    status = 400


class RegistryAuthError(ImageError):
    status = 400


class NetworkError(RuntimeFailure):
    """CNI or netns setup/teardown failed."""
