"""Typed views of the API's JSON, shared by the sync and async clients.

Plain dataclasses, built with ``from_json``. Each keeps the whole JSON object it came from in
``raw``, so a field a newer server adds is readable before this SDK names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Optional

__all__ = [
    "Access",
    "Allocation",
    "Counts",
    "Pool",
    "ExecResult",
    "ExecEvent",
    "LogLine",
    "LogsDropped",
    "FileWritten",
    "parse_time",
]


def parse_time(value: Optional[str]) -> Optional[datetime]:
    """An RFC 3339 timestamp (``2026-01-02T03:04:05.678Z``) as an aware datetime."""
    if not value:
        return None
    v = value.strip()
    if v.endswith(("Z", "z")):
        v = v[:-1] + "+00:00"
    # Python before 3.11 takes at most 6 fraction digits.
    if "." in v:
        head, rest = v.split(".", 1)
        digits = len(rest) - len(rest.lstrip("0123456789"))
        v = f"{head}.{rest[:digits][:6].ljust(6, '0')}{rest[digits:]}"
    return datetime.fromisoformat(v)


def _str_map(v: Any) -> Dict[str, str]:
    return {str(k): str(x) for k, x in (v or {}).items()}


@dataclass(frozen=True)
class Access:
    """How a session reaches its container through the gateway.

    ``token`` is in the answer that granted the allocation only (the cluster keeps a hash);
    send it as ``X-Warmpool-Token`` or ``Authorization: Bearer``, or open ``url + "?token="``
    once in a browser. ``urls`` and ``host_urls`` map each port name to its URL.
    """

    token: Optional[str]
    urls: Dict[str, str]
    host_urls: Dict[str, str]

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Access":
        return cls(
            token=d.get("token"),
            urls=_str_map(d.get("urls")),
            host_urls=_str_map(d.get("host_urls")),
        )

    def url_for(self, port: Optional[Any] = None) -> str:
        """The gateway URL by path of ``port`` (a port name, or a number the pool names);
        without one, the only URL there is (a pool that names no ports has one: its service
        port's)."""
        if port is None:
            if len(self.urls) != 1:
                raise KeyError(f"name a port: this allocation has URLs for {sorted(self.urls)}")
            return next(iter(self.urls.values()))
        try:
            return self.urls[str(port)]
        except KeyError:
            raise KeyError(f"no gateway URL for port {port!r}: there are {sorted(self.urls)}") from None

    @property
    def headers(self) -> Dict[str, str]:
        """The header that shows the token to the gateway (empty without a token)."""
        return {"X-Warmpool-Token": self.token} if self.token else {}


@dataclass(frozen=True)
class Allocation:
    """A container handed to a session (``POST /v1/allocations`` and the reads)."""

    id: str
    session_id: str
    pool: str
    container_id: str
    node: str
    ipv6: Optional[str]
    port: int
    url: Optional[str]
    created_at: Optional[datetime]
    expires_at: Optional[datetime]
    max_expires_at: Optional[datetime]
    idempotency_key: Optional[str]
    state: str
    tenant: Optional[str] = None
    released_at: Optional[datetime] = None
    release_reason: Optional[str] = None
    metadata: Dict[str, str] = field(default_factory=dict)
    settings: Optional[str] = None
    access: Optional[Access] = None
    #: What it has cost so far (or cost, once released) at its pool's price; None without one.
    cost: Optional[float] = None
    #: Node labels asked for at claim (``location``), if any.
    location: Optional[Dict[str, Any]] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def active(self) -> bool:
        """Whether the session still holds the container."""
        return self.state == "active"

    @property
    def pending(self) -> bool:
        """Whether it waits for a warm container (``async``): no container, node or lease yet."""
        return self.state == "pending"

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Allocation":
        access = d.get("access")
        return cls(
            id=str(d["id"]),
            session_id=str(d["session_id"]),
            pool=str(d["pool"]),
            # Absent while pending.
            container_id=str(d.get("container_id") or ""),
            node=str(d.get("node") or ""),
            ipv6=d.get("ipv6"),
            port=int(d.get("port") or 0),
            url=d.get("url"),
            created_at=parse_time(d.get("created_at")),
            expires_at=parse_time(d.get("expires_at")),
            max_expires_at=parse_time(d.get("max_expires_at")),
            idempotency_key=d.get("idempotency_key"),
            state=str(d["state"]),
            tenant=d.get("tenant"),
            released_at=parse_time(d.get("released_at")),
            release_reason=d.get("release_reason"),
            metadata=_str_map(d.get("metadata")),
            settings=d.get("settings"),
            access=Access.from_json(access) if isinstance(access, dict) else None,
            cost=float(d["cost"]) if isinstance(d.get("cost"), (int, float)) else None,
            location=d.get("location") if isinstance(d.get("location"), dict) else None,
            raw=d,
        )


@dataclass(frozen=True)
class Counts:
    """Containers by state."""

    total: int = 0
    creating: int = 0
    warm: int = 0
    allocated: int = 0
    releasing: int = 0
    unhealthy: int = 0
    outdated: int = 0

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Counts":
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: int(d.get(k, 0)) for k in names})


@dataclass(frozen=True)
class Pool:
    """A pool (``GET /v1/pools``): its spec as the server answers it, and its counts."""

    name: str
    image: str
    spec: Dict[str, Any]
    generation: int
    counts: Counts
    wanted: int
    created_at: Optional[datetime]
    updated_at: Optional[datetime]
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Pool":
        spec = d.get("spec") or {}
        return cls(
            name=str(spec.get("name", "")),
            image=str(spec.get("image", "")),
            spec=spec,
            generation=int(d.get("generation", 0)),
            counts=Counts.from_json(d.get("counts") or {}),
            wanted=int(d.get("wanted", 0)),
            created_at=parse_time(d.get("created_at")),
            updated_at=parse_time(d.get("updated_at")),
            raw=d,
        )


@dataclass(frozen=True)
class ExecResult:
    """A finished command: its output, and its exit code (``None`` when killed at the timeout)."""

    stdout: str
    stderr: str
    exit_code: Optional[int]
    timed_out: bool = False
    truncated: bool = False

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "ExecResult":
        code = d.get("exit_code")
        return cls(
            stdout=str(d.get("stdout", "")),
            stderr=str(d.get("stderr", "")),
            exit_code=None if code is None else int(code),
            timed_out=bool(d.get("timed_out", False)),
            truncated=bool(d.get("truncated", False)),
        )

    @property
    def ok(self) -> bool:
        """Exited with 0."""
        return self.exit_code == 0


@dataclass(frozen=True)
class ExecEvent:
    """One line of a streaming exec: ``type`` is ``output`` (``stream`` and ``data``),
    ``exit`` (``exit_code``, ``timed_out``; always last when nothing failed) or ``error``
    (``message``; last)."""

    type: str
    stream: Optional[str] = None
    data: str = ""
    exit_code: Optional[int] = None
    timed_out: bool = False
    message: Optional[str] = None

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "ExecEvent":
        code = d.get("exit_code")
        return cls(
            type=str(d.get("type", "")),
            stream=d.get("stream"),
            data=str(d.get("data", "")),
            exit_code=None if code is None else int(code),
            timed_out=bool(d.get("timed_out", False)),
            message=d.get("message"),
        )


@dataclass(frozen=True)
class LogLine:
    """A line the container printed: ``stream`` is ``stdout`` or ``stderr``."""

    stream: str
    line: str


@dataclass(frozen=True)
class LogsDropped:
    """Lines the server's rate cap left out since the last line sent."""

    dropped: int


@dataclass(frozen=True)
class FileWritten:
    """The answer of an upload."""

    path: str
    bytes: int
    archive: bool

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "FileWritten":
        return cls(path=str(d["path"]), bytes=int(d["bytes"]), archive=bool(d.get("archive")))


def allocations(items: List[Dict[str, Any]]) -> List[Allocation]:
    return [Allocation.from_json(a) for a in items]
