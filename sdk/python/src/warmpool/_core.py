"""What the sync and async clients share: configuration, the requests as data, the rules for
trying another member, and the stream decoders. No IO here beyond reading the token file.

Which member a request goes to (the rules of ``poolctl``'s client, ``cli/src/client.rs``):

- it starts with the member that answered last;
- when a member refuses the connection (nothing was sent) or answers ``503 no_quorum``
  (nothing was committed), it tries the next one, once round the list;
- a ``GET`` is also tried on the next member after any other transport failure, since
  reading twice is harmless, and so is an allocation: it always carries an idempotency key
  (one is made up when the caller gives none), so a second try answers the allocation the
  first one made, never a second one. Other writes are not repeated, and nothing that timed
  out is.
"""

from __future__ import annotations

import json
import os
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import quote

from .errors import ConfigError, DecodeError
from .models import Allocation, ExecEvent, LogLine, LogsDropped

DEFAULT_URL = "http://127.0.0.1:7070"
#: Seconds allowed to open a connection to one member.
DEFAULT_CONNECT_TIMEOUT = 2.0
#: Seconds allowed for one request and its answer, per member tried.
DEFAULT_REQUEST_TIMEOUT = 10.0
#: Added to an allocation's ``wait_ms`` (and an exec's ``timeout_secs``) for its timeout.
TIMEOUT_MARGIN = 10.0
#: A stream (logs) that delivers nothing, not even a keep-alive, for this long is dead.
DEFAULT_STREAM_IDLE_TIMEOUT = 60.0
#: First and longest pause between reads while waiting for a pending allocation.
PENDING_POLL = (0.05, 1.0)
#: Longest ``wait_ms`` the API takes.
MAX_WAIT_MS = 60_000
#: Error codes after which another member may do better (nothing was committed).
FAILOVER_CODES = frozenset({"no_quorum"})

USER_AGENT = "warmpool-python/0.1.0"

AllocationRef = Union[str, Allocation, Any]


def token_files() -> List[Path]:
    """Where a token is looked for when none is given: the file ``WARMPOOL_TOKEN_FILE`` (or
    ``POOLCTL_TOKEN_FILE``) names, then the bootstrap admin token a new cluster's first member
    writes into its data directory (``/var/lib/warmpool`` as installed, ``./warmpool-data``)."""
    files = [Path(os.environ[v]) for v in ("WARMPOOL_TOKEN_FILE", "POOLCTL_TOKEN_FILE") if os.environ.get(v)]
    files += [Path("/var/lib/warmpool/admin.token"), Path("warmpool-data/admin.token")]
    return files


def read_token_file(path: Path) -> Optional[str]:
    """The token in ``path`` if it can be read and holds one (``wpk_...``, no whitespace)."""
    try:
        t = path.read_text().strip()
    except OSError:
        return None
    return t if t.startswith("wpk_") and not any(c.isspace() for c in t) else None


def resolve_token(token: Optional[str], token_file: Optional[Union[str, Path]]) -> Optional[str]:
    """The API key: the argument, else ``WARMPOOL_TOKEN`` (or ``POOLCTL_TOKEN``), else the
    first token file that holds one (``token_file`` first when given)."""
    if token is not None:
        return token.strip() or None
    if token_file is not None:
        t = read_token_file(Path(token_file))
        if t is None:
            raise ConfigError(f"the token file {token_file} holds no token (wpk_...)")
        return t
    for var in ("WARMPOOL_TOKEN", "POOLCTL_TOKEN"):
        if os.environ.get(var, "").strip():
            return os.environ[var].strip()
    for f in token_files():
        t = read_token_file(f)
        if t:
            return t
    return None


def resolve_urls(base_url: Optional[Union[str, Sequence[str]]]) -> List[str]:
    """Members' base URLs: the argument (a list, or a comma-separated string), else
    ``WARMPOOL_URL`` (or ``POOLCTL_URL``), else ``http://127.0.0.1:7070``. A scheme-less
    ``host:port`` means http."""
    if base_url is None:
        base_url = os.environ.get("WARMPOOL_URL") or os.environ.get("POOLCTL_URL") or DEFAULT_URL
    parts = base_url.split(",") if isinstance(base_url, str) else list(base_url)
    urls = []
    for u in (p.strip() for p in parts):
        if not u:
            continue
        if "://" not in u:
            u = "http://" + u
        if not u.startswith(("http://", "https://")):
            raise ConfigError(f"{u}: only http:// and https:// members are supported")
        urls.append(u.rstrip("/"))
    if not urls:
        raise ConfigError("no control-plane URL given")
    return urls


def resolve_verify(
    ca_cert: Optional[Union[str, Path]], verify: Union[bool, ssl.SSLContext, None]
) -> Union[bool, ssl.SSLContext]:
    """TLS verification: the system's roots plus ``ca_cert`` (a PEM file; else
    ``WARMPOOL_CA_CERT`` or ``POOLCTL_CA_CERT``), or ``verify`` as given."""
    if verify is not None and ca_cert is None:
        return verify
    ca = ca_cert or os.environ.get("WARMPOOL_CA_CERT") or os.environ.get("POOLCTL_CA_CERT")
    if not ca:
        return True if verify is None else verify
    ctx = ssl.create_default_context()
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot use the CA certificate {ca}: {e}") from e
    return ctx


def allocation_id(ref: AllocationRef) -> str:
    """An allocation's id from an id, an :class:`Allocation` or a sandbox."""
    if isinstance(ref, str):
        return ref
    inner = getattr(ref, "allocation", ref)
    return str(getattr(inner, "id"))


def path(*segments: str) -> str:
    return "/" + "/".join(quote(s, safe="") for s in segments)


@dataclass
class Call:
    """One request, kept as data so that it can be sent to one member after another."""

    method: str
    path: str
    params: List[Tuple[str, str]] = field(default_factory=list)
    json: Any = None
    content: Optional[bytes] = None
    headers: Dict[str, str] = field(default_factory=dict)
    #: Seconds for the whole exchange (None: the client's request timeout).
    timeout: Optional[float] = None
    #: Answer read as a stream; ``timeout`` then bounds the silence between bytes.
    stream: bool = False
    #: Try the next member after a transport failure (reads, and allocations with their key).
    retry_on_transport: bool = False


def allocate_call(
    pool: str,
    *,
    session_id: Optional[str],
    lease_seconds: Optional[int],
    wait_ms: Optional[int],
    idempotency_key: Optional[str],
    env: Optional[Mapping[str, str]],
    secrets: Optional[Mapping[str, str]],
    metadata: Optional[Mapping[str, str]],
    wait_for_settings: bool,
    tenant: Optional[str],
    request_timeout: float,
    asynchronous: bool = False,
    location: Optional[Mapping[str, Union[str, Sequence[str]]]] = None,
    max_lifetime_secs: Optional[int] = None,
) -> Call:
    body: Dict[str, Any] = {"pool": pool, "idempotency_key": idempotency_key or str(uuid.uuid4())}
    for k, v in (
        ("session_id", session_id),
        ("lease_seconds", lease_seconds),
        ("wait_ms", wait_ms),
        ("tenant", tenant),
    ):
        if v is not None:
            body[k] = v
    # Sent only when given, so a server without settings at claim still takes the rest.
    for k, m in (("env", env), ("secrets", secrets), ("metadata", metadata)):
        if m:
            body[k] = {str(a): str(b) for a, b in m.items()}
    if wait_for_settings:
        body["wait_for"] = "settings"
    # Sent only when given, so a server without them still takes the rest.
    if asynchronous:
        body["async"] = True
    if location:
        body["location"] = {
            str(k): (str(v) if isinstance(v, str) else [str(x) for x in v]) for k, v in location.items()
        }
    if max_lifetime_secs is not None:
        body["max_lifetime_secs"] = max_lifetime_secs
    wait = min(wait_ms if wait_ms is not None else MAX_WAIT_MS, MAX_WAIT_MS) / 1000.0
    return Call(
        "POST",
        "/v1/allocations",
        json=body,
        timeout=max(request_timeout, wait + TIMEOUT_MARGIN),
        retry_on_transport=True,
    )


def exec_body(
    command: Union[str, Sequence[str]],
    env: Optional[Mapping[str, str]],
    working_dir: Optional[str],
    timeout_secs: Optional[int],
) -> Dict[str, Any]:
    """A command as a string runs under ``sh -c``; a list runs as it is."""
    argv = ["sh", "-c", command] if isinstance(command, str) else [str(a) for a in command]
    body: Dict[str, Any] = {"command": argv}
    if env:
        body["env"] = {str(k): str(v) for k, v in env.items()}
    if working_dir is not None:
        body["working_dir"] = working_dir
    if timeout_secs is not None:
        body["timeout_secs"] = timeout_secs
    return body


def exec_timeout(timeout_secs: Optional[int], request_timeout: float) -> float:
    return max(request_timeout, (timeout_secs or 60) + TIMEOUT_MARGIN)


def files_params(file_path: str, archive: bool) -> List[Tuple[str, str]]:
    params = [("path", file_path)]
    if archive:
        params.append(("archive", "true"))
    return params


def as_bytes(data: Union[bytes, bytearray, memoryview, str, os.PathLike, Any]) -> bytes:
    """Upload content: bytes, text (UTF-8), a local path, or a binary file object."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, os.PathLike):
        return Path(data).read_bytes()
    if hasattr(data, "read"):
        out = data.read()
        return out.encode() if isinstance(out, str) else bytes(out)
    raise TypeError(f"cannot upload a {type(data).__name__}: give bytes, str, a path or a file")


def decode_json(url: str, status: int, body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as e:
        snippet = " ".join(body.decode("utf-8", "replace").split())[:200]
        raise DecodeError(url, status, f"{e}; body: {snippet}") from None


class SSEDecoder:
    """Server-Sent Events, one line at a time (without its line ending): returns a finished
    ``(event, data, id)`` at each blank line, else ``None``."""

    def __init__(self) -> None:
        self._event = ""
        self._data: List[str] = []
        self._id: Optional[str] = None
        self.retry_ms: Optional[int] = None

    def feed(self, line: str) -> Optional[Tuple[str, str, Optional[str]]]:
        if line == "":
            if not self._data and not self._event:
                return None
            out = (self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return out
        if line.startswith(":"):
            return None  # a comment: keep-alive
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


class LogsEnded(Exception):
    """Internal: the server said ``end``."""


def log_item(url: str, event: str, data: str) -> Optional[Union[LogLine, LogsDropped]]:
    """One SSE event of ``/logs`` as an item; ``None`` for events to skip; raises
    :class:`LogsEnded` at ``end``."""
    if event == "end":
        raise LogsEnded()
    if event not in ("log", "dropped"):
        return None
    d = decode_json(url, 200, data.encode())
    if event == "log":
        return LogLine(stream=str(d.get("stream", "stdout")), line=str(d.get("line", "")))
    return LogsDropped(dropped=int(d.get("dropped", 0)))


def exec_event(url: str, line: str) -> Optional[ExecEvent]:
    if not line.strip():
        return None
    return ExecEvent.from_json(decode_json(url, 200, line.encode()))


def openapi_has(doc: Mapping[str, Any], route: str, method: Optional[str] = None) -> bool:
    """Whether an OpenAPI document lists ``route`` (and ``method`` on it)."""
    item = (doc.get("paths") or {}).get(route)
    if item is None:
        return False
    return method is None or method.lower() in item


__all__: Iterable[str] = []
