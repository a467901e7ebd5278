"""Every error the SDK raises.

Two families, kept apart because callers treat them differently:

- :class:`APIError` and its subclasses: the server answered with an error status. The class
  is chosen by the answer's ``error.code`` (the API's ``ErrorCode``: ``not_found``,
  ``no_capacity``, ...), so ``except NotFoundError`` needs no string matching; ``status``,
  ``code``, ``message`` and ``retry_after`` (seconds, from ``Retry-After``) are on every one.
- transport errors: no member could be reached (:class:`UnreachableError`, nothing was sent),
  a request that got no complete answer in time (:class:`TimeoutError`) or broke off
  (:class:`TransportError`), an answer that is not what the API promises
  (:class:`DecodeError`), and a client set up wrongly (:class:`ConfigError`).
"""

from __future__ import annotations

import builtins
import json
from typing import Dict, List, Mapping, Optional, Tuple, Type

__all__ = [
    "WarmpoolError",
    "ConfigError",
    "UnreachableError",
    "TimeoutError",
    "TransportError",
    "DecodeError",
    "APIError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "MethodNotAllowedError",
    "ConflictError",
    "NoMatchingNodeError",
    "EndedError",
    "PayloadTooLargeError",
    "UnsupportedMediaTypeError",
    "QuotaError",
    "OverQuotaError",
    "RateLimitedError",
    "UnavailableError",
    "NoCapacityError",
    "NoQuorumError",
    "OverloadedError",
    "InternalServerError",
    "AgentUnavailableError",
    "BadGatewayError",
    "error_from_response",
]


class WarmpoolError(Exception):
    """Base of every error this SDK raises."""


class ConfigError(WarmpoolError):
    """The client was given something unusable (no URL, a bad CA file, ...)."""


class UnreachableError(WarmpoolError):
    """No member accepted a connection: the request was never sent."""

    def __init__(self, attempts: List[Tuple[str, str]]):
        self.attempts = attempts
        tried = "; ".join(f"{url}: {why}" for url, why in attempts) or "no member tried"
        super().__init__(f"no control-plane member reachable ({tried})")


class TimeoutError(WarmpoolError, builtins.TimeoutError):  # noqa: A001
    """The request was sent but no complete answer came in time (also a builtin
    ``TimeoutError``, so ``except TimeoutError`` catches it either way)."""

    def __init__(self, url: str, after: Optional[float] = None):
        self.url = url
        self.after = after
        shown = f" after {after:g} s" if after else ""
        super().__init__(f"request to {url} timed out{shown}")


class TransportError(WarmpoolError):
    """The connection failed after the request may have reached the server."""

    def __init__(self, url: str, reason: str):
        self.url = url
        self.reason = reason
        super().__init__(f"request to {url} failed: {reason}")


class DecodeError(WarmpoolError):
    """The server answered, but not with what the API promises."""

    def __init__(self, url: str, status: int, reason: str):
        self.url = url
        self.status = status
        self.reason = reason
        super().__init__(f"unexpected answer from {url} (HTTP {status}): {reason}")


class APIError(WarmpoolError):
    """The server answered with an error status (and usually ``{"error":{"code","message"}}``).

    ``code`` is the answer's ``error.code``, or ``http_<status>`` when the body was not an
    error body; ``retry_after`` is the ``Retry-After`` header in seconds, when given.
    """

    #: The API error code this class stands for (``None``: any).
    error_code: Optional[str] = None

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retry_after: Optional[float] = None,
        url: Optional[str] = None,
    ):
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.url = url
        super().__init__(f"{code}: {message}")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, retry_after={self.retry_after!r})"
        )


class BadRequestError(APIError):
    """400 ``bad_request``: malformed or out of range."""

    error_code = "bad_request"


class AuthenticationError(APIError):
    """401 ``unauthorized``: no key, or an unknown, malformed or revoked one."""

    error_code = "unauthorized"


class PermissionDeniedError(APIError):
    """403 ``forbidden``: the key's role or tenant may not do this."""

    error_code = "forbidden"


class NotFoundError(APIError):
    """404 ``not_found``: nothing by that name (or another tenant's)."""

    error_code = "not_found"


class MethodNotAllowedError(APIError):
    """405 ``method_not_allowed``."""

    error_code = "method_not_allowed"


class ConflictError(APIError):
    """409 ``conflict``: it exists, or its state forbids the change."""

    error_code = "conflict"


class NoMatchingNodeError(ConflictError):
    """409 ``no_matching_node``: no ready node carries the labels the allocation's
    ``location`` asks for, so none could ever serve it."""

    error_code = "no_matching_node"


class EndedError(APIError):
    """410 ``ended``: the allocation has ended, and its container's logs, exec and files too."""

    error_code = "ended"


class PayloadTooLargeError(APIError):
    """413 ``payload_too_large``."""

    error_code = "payload_too_large"


class UnsupportedMediaTypeError(APIError):
    """415 ``unsupported_media_type``."""

    error_code = "unsupported_media_type"


class QuotaError(APIError):
    """429: the tenant's limits; wait ``retry_after`` seconds."""


class OverQuotaError(QuotaError):
    """429 ``over_quota``: the tenant holds its ``max_allocations``."""

    error_code = "over_quota"


class RateLimitedError(QuotaError):
    """429 ``rate_limited``: the tenant asks faster than its rate."""

    error_code = "rate_limited"


class UnavailableError(APIError):
    """503: try again later (``retry_after``), or another member."""


class NoCapacityError(UnavailableError):
    """503 ``no_capacity``: no warm container came free within ``wait_ms``."""

    error_code = "no_capacity"


class NoQuorumError(UnavailableError):
    """503 ``no_quorum``: no leader or no quorum (every member tried said so)."""

    error_code = "no_quorum"


class OverloadedError(UnavailableError):
    """503 ``overloaded``: the leader queues as many writes as it takes."""

    error_code = "overloaded"


class InternalServerError(APIError):
    """500 ``internal``: a bug or a broken part."""

    error_code = "internal"


class AgentUnavailableError(APIError):
    """502 ``agent_unavailable``: the container's agent did not answer; may work later."""

    error_code = "agent_unavailable"


class BadGatewayError(APIError):
    """502 ``bad_gateway``: the gateway could not reach the container."""

    error_code = "bad_gateway"


_BY_CODE: Dict[str, Type[APIError]] = {
    cls.error_code: cls
    for cls in (
        BadRequestError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        MethodNotAllowedError,
        ConflictError,
        NoMatchingNodeError,
        EndedError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
        OverQuotaError,
        RateLimitedError,
        NoCapacityError,
        NoQuorumError,
        OverloadedError,
        InternalServerError,
        AgentUnavailableError,
        BadGatewayError,
    )
    if cls.error_code
}

# A body that is not an error body (a proxy's page, an older server): the class by status.
_BY_STATUS: Dict[int, Type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    409: ConflictError,
    410: EndedError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    429: QuotaError,
    500: InternalServerError,
    502: BadGatewayError,
    503: UnavailableError,
}


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """``Retry-After`` as delay-seconds (the API never sends the HTTP-date form)."""
    if value is None:
        return None
    try:
        return float(int(value.strip()))
    except ValueError:
        return None


def error_from_response(
    status: int, body: bytes, headers: Mapping[str, str], url: Optional[str] = None
) -> APIError:
    """The typed :class:`APIError` for an error answer's status, body and headers."""
    retry_after = parse_retry_after(headers.get("retry-after"))
    try:
        err = json.loads(body)["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        text = " ".join(body.decode("utf-8", "replace").split())[:200]
        cls = _BY_STATUS.get(status, APIError)
        return cls(status, f"http_{status}", text or f"HTTP {status}", retry_after, url)
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status, APIError)
    return cls(status, code, message, retry_after, url)
