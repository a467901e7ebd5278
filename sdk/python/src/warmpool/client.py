"""The synchronous client, :class:`Client`, and :class:`Sandbox`, an allocation in hand."""

from __future__ import annotations

import ssl
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import httpx

from . import _core
from . import errors as _errors
from ._core import AllocationRef, Call
from .errors import (
    EndedError,
    NotFoundError,
    TimeoutError,
    TransportError,
    UnreachableError,
    WarmpoolError,
    error_from_response,
)
from .models import Allocation, ExecEvent, ExecResult, FileWritten, LogLine, LogsDropped, Pool

__all__ = ["Client", "Sandbox"]


class Client:
    """A client of the control plane's REST API v1 (one connection pool; share it).

    ``base_url``: one member's URL, several (a list, or comma-separated), or ``None`` for
    ``WARMPOOL_URL`` / ``POOLCTL_URL`` / ``http://127.0.0.1:7070``. ``token``: the API key, else
    ``WARMPOOL_TOKEN`` / ``POOLCTL_TOKEN``, else a token file (see :func:`warmpool.token_files`).
    ``ca_cert``: a PEM file of a CA to trust besides the system's (``WARMPOOL_CA_CERT``).
    """

    def __init__(
        self,
        base_url: Optional[Union[str, Sequence[str]]] = None,
        *,
        token: Optional[str] = None,
        token_file: Optional[Union[str, Path]] = None,
        ca_cert: Optional[Union[str, Path]] = None,
        verify: Union[bool, ssl.SSLContext, None] = None,
        connect_timeout: float = _core.DEFAULT_CONNECT_TIMEOUT,
        request_timeout: float = _core.DEFAULT_REQUEST_TIMEOUT,
        stream_idle_timeout: float = _core.DEFAULT_STREAM_IDLE_TIMEOUT,
    ) -> None:
        self.urls = _core.resolve_urls(base_url)
        self._token = _core.resolve_token(token, token_file)
        self._connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.stream_idle_timeout = stream_idle_timeout
        self._preferred = 0
        headers = {"User-Agent": _core.USER_AGENT}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        self._http = httpx.Client(verify=_core.resolve_verify(ca_cert, verify), headers=headers)

    def __repr__(self) -> str:
        return f"Client(urls={self.urls!r}, token={'<set>' if self._token else None})"

    # ---- lifecycle ----

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def current_url(self) -> str:
        """The member that answered last (tried first next time)."""
        return self.urls[self._preferred % len(self.urls)]

    # ---- the cluster ----

    def health(self) -> Dict[str, Any]:
        """``GET /v1/health``."""
        return self._json(Call("GET", "/v1/health", retry_on_transport=True))

    def ready(self) -> bool:
        """``GET /v1/ready``: whether a member knows a leader."""
        try:
            self._json(Call("GET", "/v1/ready", retry_on_transport=True))
            return True
        except _errors.UnavailableError:
            return False

    def whoami(self) -> Dict[str, Any]:
        """``GET /v1/whoami``: the key this client sends, its role and tenant."""
        return self._json(Call("GET", "/v1/whoami", retry_on_transport=True))

    def openapi(self) -> Dict[str, Any]:
        """``GET /v1/openapi.json``: the server's API, as it describes itself."""
        return self._json(Call("GET", "/v1/openapi.json", retry_on_transport=True))

    def supports(self, route: str, method: Optional[str] = None) -> bool:
        """Whether the server's OpenAPI document has ``route`` (e.g.
        ``/v1/allocations/{id}/exec``), and ``method`` on it when given."""
        return _core.openapi_has(self.openapi(), route, method)

    # ---- pools ----

    def list_pools(self) -> List[Pool]:
        """``GET /v1/pools``."""
        return [Pool.from_json(p) for p in self._json(Call("GET", "/v1/pools", retry_on_transport=True))]

    def get_pool(self, name: str) -> Pool:
        """``GET /v1/pools/{name}``; :class:`NotFoundError` if there is none."""
        return Pool.from_json(self._json(Call("GET", _core.path("v1", "pools", name), retry_on_transport=True)))

    # ---- allocations ----

    def allocate(
        self,
        pool: str,
        *,
        session_id: Optional[str] = None,
        lease_seconds: Optional[int] = None,
        wait_ms: Optional[int] = None,
        idempotency_key: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        secrets: Optional[Mapping[str, str]] = None,
        metadata: Optional[Mapping[str, str]] = None,
        wait_for_settings: bool = False,
        tenant: Optional[str] = None,
        asynchronous: bool = False,
        location: Optional[Mapping[str, Union[str, Sequence[str]]]] = None,
        max_lifetime_secs: Optional[int] = None,
    ) -> "Sandbox":
        """``POST /v1/allocations``: a warm container of ``pool`` for a session.

        Returns a :class:`Sandbox`; ``with client.allocate("pool") as sandbox:`` releases it
        when the block ends, also on an exception. ``wait_ms``: how long to wait for a warm
        container when none is free (else :class:`NoCapacityError`, with ``retry_after``).
        Without ``idempotency_key`` one is made up, so the retries on another member (see
        the module ``warmpool._core``) never make a second allocation. ``env`` and
        ``secrets`` reach the container after the grant (``/run/warmpool/env`` and every
        exec) and are never answered back; ``metadata`` is stored and filterable;
        ``wait_for_settings`` answers once env and secrets are in place.

        ``asynchronous=True`` answers at once: when no container is warm the allocation is
        ``pending`` (``sandbox.pending``) and granted when one is, however long that takes;
        :meth:`wait_active` (or ``sandbox.wait_active()``) waits for it, ``release`` cancels
        it. ``location`` names node labels the container's node must carry (a list value is
        an order of preference: ``{"region": ["eu", "us"]}``); refused with
        :class:`NoMatchingNodeError` when no ready node matches. ``max_lifetime_secs`` caps
        this allocation's lifetime (no longer than its pool's).
        """
        call = _core.allocate_call(
            pool,
            session_id=session_id,
            lease_seconds=lease_seconds,
            wait_ms=wait_ms,
            idempotency_key=idempotency_key,
            env=env,
            secrets=secrets,
            metadata=metadata,
            wait_for_settings=wait_for_settings,
            tenant=tenant,
            request_timeout=self.request_timeout,
            asynchronous=asynchronous,
            location=location,
            max_lifetime_secs=max_lifetime_secs,
        )
        return Sandbox(self, Allocation.from_json(self._json(call)))

    def get_allocation(self, allocation: AllocationRef) -> Allocation:
        """``GET /v1/allocations/{id}``."""
        p = _core.path("v1", "allocations", _core.allocation_id(allocation))
        return Allocation.from_json(self._json(Call("GET", p, retry_on_transport=True)))

    def wait_active(self, allocation: AllocationRef, timeout: Optional[float] = None) -> Allocation:
        """Reads a pending allocation until it is no longer ``pending`` (``active``, or
        ``cancelled`` if it was cancelled meanwhile); :class:`TimeoutError` after ``timeout``
        seconds when given (the allocation stays pending)."""
        import time

        aid = _core.allocation_id(allocation)
        start = time.monotonic()
        pause, longest = _core.PENDING_POLL
        while True:
            try:
                a = self.get_allocation(aid)
            except NotFoundError:
                # Cancelled: a pending allocation leaves no record.
                return Allocation.from_json({"id": aid, "session_id": "", "pool": "", "state": "cancelled"})
            if a.state != "pending":
                return a
            if timeout is not None and time.monotonic() - start > timeout:
                raise TimeoutError(_core.path("v1", "allocations", aid), timeout)
            time.sleep(pause)
            pause = min(pause * 2, longest)

    def list_allocations(
        self,
        *,
        pool: Optional[str] = None,
        session: Optional[str] = None,
        state: Optional[str] = None,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> List[Allocation]:
        """``GET /v1/allocations``, filtered (``state``: ``active`` or ``released``;
        ``metadata``: every pair must match)."""
        params: List[Tuple[str, str]] = [
            (k, v) for k, v in (("pool", pool), ("session", session), ("state", state)) if v is not None
        ]
        params += [(f"metadata.{k}", str(v)) for k, v in (metadata or {}).items()]
        items = self._json(Call("GET", "/v1/allocations", params=params, retry_on_transport=True))
        return [Allocation.from_json(a) for a in items]

    def renew(self, allocation: AllocationRef, lease_seconds: Optional[int] = None) -> Allocation:
        """``POST /v1/allocations/{id}/renew``: the lease runs ``lease_seconds`` (the pool's
        default when ``None``) from now."""
        body = {} if lease_seconds is None else {"lease_seconds": lease_seconds}
        p = _core.path("v1", "allocations", _core.allocation_id(allocation), "renew")
        return Allocation.from_json(self._json(Call("POST", p, json=body)))

    def release(self, allocation: AllocationRef) -> Allocation:
        """``DELETE /v1/allocations/{id}``: ends it (idempotent); answers it released."""
        p = _core.path("v1", "allocations", _core.allocation_id(allocation))
        return Allocation.from_json(self._json(Call("DELETE", p)))

    # ---- using the container ----

    def exec(
        self,
        allocation: AllocationRef,
        command: Union[str, Sequence[str]],
        *,
        env: Optional[Mapping[str, str]] = None,
        working_dir: Optional[str] = None,
        timeout_secs: Optional[int] = None,
    ) -> ExecResult:
        """``POST /v1/allocations/{id}/exec``: runs ``command`` (a string runs under
        ``sh -c``) and returns its output and exit code once it ended."""
        call = Call(
            "POST",
            _core.path("v1", "allocations", _core.allocation_id(allocation), "exec"),
            json=_core.exec_body(command, env, working_dir, timeout_secs),
            timeout=_core.exec_timeout(timeout_secs, self.request_timeout),
        )
        return ExecResult.from_json(self._json(call))

    def exec_stream(
        self,
        allocation: AllocationRef,
        command: Union[str, Sequence[str]],
        *,
        env: Optional[Mapping[str, str]] = None,
        working_dir: Optional[str] = None,
        timeout_secs: Optional[int] = None,
    ) -> Iterator[ExecEvent]:
        """Like :meth:`exec`, yielding output as it comes: :class:`ExecEvent` ``output``
        items, then one ``exit`` (or ``error``) last."""
        call = Call(
            "POST",
            _core.path("v1", "allocations", _core.allocation_id(allocation), "exec"),
            params=[("stream", "true")],
            json=_core.exec_body(command, env, working_dir, timeout_secs),
            headers={"Accept": "application/x-ndjson"},
            timeout=_core.exec_timeout(timeout_secs, self.request_timeout),
            stream=True,
        )
        with self._stream(call) as (resp, url):
            for line in resp.iter_lines():
                ev = _core.exec_event(url, line)
                if ev is not None:
                    yield ev

    def upload(
        self, allocation: AllocationRef, path: str, data: Any, *, archive: bool = False
    ) -> FileWritten:
        """``PUT /v1/allocations/{id}/files?path=``: writes ``data`` (bytes, text, a local
        path or a file object) to ``path`` in the container; with ``archive``, ``data`` is a
        tar archive unpacked into the directory ``path``."""
        call = Call(
            "PUT",
            _core.path("v1", "allocations", _core.allocation_id(allocation), "files"),
            params=_core.files_params(path, archive),
            content=_core.as_bytes(data),
            headers={"Content-Type": "application/x-tar" if archive else "application/octet-stream"},
            timeout=max(self.request_timeout, 120.0),
        )
        return FileWritten.from_json(self._json(call))

    def download(self, allocation: AllocationRef, path: str, *, archive: bool = False) -> bytes:
        """``GET /v1/allocations/{id}/files?path=``: the file's bytes (with ``archive``, a tar
        archive of the file or directory)."""
        return b"".join(self.iter_download(allocation, path, archive=archive))

    def iter_download(
        self, allocation: AllocationRef, path: str, *, archive: bool = False
    ) -> Iterator[bytes]:
        """Like :meth:`download`, in chunks as they arrive."""
        call = Call(
            "GET",
            _core.path("v1", "allocations", _core.allocation_id(allocation), "files"),
            params=_core.files_params(path, archive),
            headers={"Accept": "*/*"},
            timeout=self.stream_idle_timeout,
            stream=True,
            retry_on_transport=True,
        )
        with self._stream(call) as (resp, url):
            try:
                yield from resp.iter_bytes()
            except httpx.TransportError as e:
                raise TransportError(url, str(e)) from e

    def logs(
        self, allocation: AllocationRef, *, follow: bool = False, tail: Optional[int] = None
    ) -> Iterator[Union[LogLine, LogsDropped]]:
        """``GET /v1/allocations/{id}/logs`` (SSE): the container's output as
        :class:`LogLine` items (and :class:`LogsDropped` when the server's rate cap left lines
        out). Without ``follow`` it ends after what is there now; with it, when the container
        stops (or the caller stops iterating)."""
        params = [("follow", "true" if follow else "false")]
        if tail is not None:
            params.append(("tail", str(tail)))
        call = Call(
            "GET",
            _core.path("v1", "allocations", _core.allocation_id(allocation), "logs"),
            params=params,
            headers={"Accept": "text/event-stream"},
            timeout=self.stream_idle_timeout,
            stream=True,
            retry_on_transport=True,
        )
        decoder = _core.SSEDecoder()
        with self._stream(call) as (resp, url):
            try:
                for line in resp.iter_lines():
                    ev = decoder.feed(line)
                    if ev is None:
                        continue
                    item = _core.log_item(url, ev[0], ev[1])
                    if item is not None:
                        yield item
            except _core.LogsEnded:
                return
            except httpx.TimeoutException as e:
                raise TimeoutError(url, self.stream_idle_timeout) from e
            except httpx.TransportError as e:
                raise TransportError(url, str(e)) from e

    # ---- sending ----

    def _timeout(self, call: Call) -> httpx.Timeout:
        total = call.timeout if call.timeout is not None else self.request_timeout
        return httpx.Timeout(total, connect=min(self._connect_timeout, total))

    def _send(self, call: Call) -> Tuple[httpx.Response, str]:
        n = len(self.urls)
        start = self._preferred % n
        unreachable: List[Tuple[str, str]] = []
        fallback: Optional[WarmpoolError] = None
        for k in range(n):
            idx = (start + k) % n
            base = self.urls[idx]
            url = base + call.path
            headers = {"Accept": "application/json", **call.headers}
            req = self._http.build_request(
                call.method,
                url,
                params=call.params or None,
                json=call.json if call.content is None else None,
                content=call.content,
                headers=headers,
                timeout=self._timeout(call),
            )
            try:
                resp = self._http.send(req, stream=call.stream)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                unreachable.append((base, str(e) or type(e).__name__))
                continue
            except httpx.TimeoutException:
                raise TimeoutError(url, call.timeout or self.request_timeout) from None
            except httpx.TransportError as e:
                err = TransportError(url, str(e) or type(e).__name__)
                if not call.retry_on_transport:
                    raise err from e
                fallback = err
                continue
            if resp.status_code == 503:
                err = self._error(resp, url)
                if err.code in _core.FAILOVER_CODES:
                    fallback = err
                    continue
                self._preferred = idx
                raise err
            self._preferred = idx
            return resp, url
        if fallback is not None:
            raise fallback
        raise UnreachableError(unreachable)

    def _error(self, resp: httpx.Response, url: str) -> _errors.APIError:
        try:
            body = resp.read()
        finally:
            resp.close()
        return error_from_response(resp.status_code, body, resp.headers, url)

    def _json(self, call: Call) -> Any:
        resp, url = self._send(call)
        if resp.status_code >= 300:
            raise self._error(resp, url)
        try:
            body = resp.read()
        except httpx.TimeoutException:
            raise TimeoutError(url, call.timeout or self.request_timeout) from None
        except httpx.TransportError as e:
            raise TransportError(url, str(e)) from e
        return _core.decode_json(url, resp.status_code, body)

    @contextmanager
    def _stream(self, call: Call) -> Iterator[Tuple[httpx.Response, str]]:
        resp, url = self._send(call)
        try:
            if resp.status_code >= 300:
                raise self._error(resp, url)
            yield resp, url
        finally:
            resp.close()


class Sandbox:
    """An allocation in hand: its record (``sandbox.allocation``; its fields read through,
    ``sandbox.id``, ``sandbox.url``, ``sandbox.access``...) and what can be done with it.

    As a context manager it releases the allocation when the block ends, also when it ends
    with an exception (which then propagates unchanged; a failed release is added to it as a
    note)."""

    def __init__(self, client: Client, allocation: Allocation) -> None:
        self.client = client
        self.allocation = allocation

    def __getattr__(self, name: str) -> Any:
        if name == "allocation":
            raise AttributeError(name)
        return getattr(self.allocation, name)

    def __repr__(self) -> str:
        a = self.allocation
        return f"Sandbox(id={a.id!r}, pool={a.pool!r}, url={a.url!r}, state={a.state!r})"

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        try:
            self.release()
        except (NotFoundError, EndedError):
            pass
        except WarmpoolError as e:
            if exc is None:
                raise
            if hasattr(exc, "add_note"):
                exc.add_note(f"releasing allocation {self.allocation.id} failed too: {e}")

    def wait_active(self, timeout: Optional[float] = None) -> Allocation:
        """Waits until a pending allocation is active (see :meth:`Client.wait_active`)."""
        self.allocation = self._keep_access(self.client.wait_active(self.allocation.id, timeout))
        return self.allocation

    def refresh(self) -> Allocation:
        """Reads the allocation again."""
        self.allocation = self._keep_access(self.client.get_allocation(self.allocation.id))
        return self.allocation

    def renew(self, lease_seconds: Optional[int] = None) -> Allocation:
        self.allocation = self._keep_access(self.client.renew(self.allocation.id, lease_seconds))
        return self.allocation

    def release(self) -> Allocation:
        self.allocation = self._keep_access(self.client.release(self.allocation.id))
        return self.allocation

    def exec(self, command: Union[str, Sequence[str]], **kw: Any) -> ExecResult:
        return self.client.exec(self.allocation.id, command, **kw)

    def exec_stream(self, command: Union[str, Sequence[str]], **kw: Any) -> Iterator[ExecEvent]:
        return self.client.exec_stream(self.allocation.id, command, **kw)

    def upload(self, path: str, data: Any, *, archive: bool = False) -> FileWritten:
        return self.client.upload(self.allocation.id, path, data, archive=archive)

    def download(self, path: str, *, archive: bool = False) -> bytes:
        return self.client.download(self.allocation.id, path, archive=archive)

    def logs(
        self, *, follow: bool = False, tail: Optional[int] = None
    ) -> Iterator[Union[LogLine, LogsDropped]]:
        return self.client.logs(self.allocation.id, follow=follow, tail=tail)

    def _keep_access(self, new: Allocation) -> Allocation:
        # The gateway token is in the granting answer only: keep it across later reads.
        old = self.allocation.access
        if old is not None and old.token and (new.access is None or not new.access.token):
            merged = old if new.access is None else replace(new.access, token=old.token)
            new = replace(new, access=merged)
        return new
