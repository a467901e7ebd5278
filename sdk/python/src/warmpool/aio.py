"""The asynchronous client, :class:`AsyncClient`, and :class:`AsyncSandbox`.

The same requests, rules and models as :mod:`warmpool.client`, over ``httpx.AsyncClient``::

    async with AsyncClient() as client:
        async with client.allocate("demo") as sandbox:   # released when the block ends
            print((await sandbox.exec("uname -a")).stdout)
"""

from __future__ import annotations

import ssl
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import (
    Any,
    AsyncIterator,
    Dict,
    Generator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

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

__all__ = ["AsyncClient", "AsyncSandbox"]


class AsyncClient:
    """The asynchronous twin of :class:`warmpool.Client`; the same arguments."""

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
        self._http = httpx.AsyncClient(verify=_core.resolve_verify(ca_cert, verify), headers=headers)

    def __repr__(self) -> str:
        return f"AsyncClient(urls={self.urls!r}, token={'<set>' if self._token else None})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    @property
    def current_url(self) -> str:
        return self.urls[self._preferred % len(self.urls)]

    # ---- the cluster ----

    async def health(self) -> Dict[str, Any]:
        return await self._json(Call("GET", "/v1/health", retry_on_transport=True))

    async def ready(self) -> bool:
        try:
            await self._json(Call("GET", "/v1/ready", retry_on_transport=True))
            return True
        except _errors.UnavailableError:
            return False

    async def whoami(self) -> Dict[str, Any]:
        return await self._json(Call("GET", "/v1/whoami", retry_on_transport=True))

    async def openapi(self) -> Dict[str, Any]:
        return await self._json(Call("GET", "/v1/openapi.json", retry_on_transport=True))

    async def supports(self, route: str, method: Optional[str] = None) -> bool:
        return _core.openapi_has(await self.openapi(), route, method)

    # ---- pools ----

    async def list_pools(self) -> List[Pool]:
        items = await self._json(Call("GET", "/v1/pools", retry_on_transport=True))
        return [Pool.from_json(p) for p in items]

    async def get_pool(self, name: str) -> Pool:
        p = _core.path("v1", "pools", name)
        return Pool.from_json(await self._json(Call("GET", p, retry_on_transport=True)))

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
    ) -> "_Allocating":
        """As :meth:`warmpool.Client.allocate`. ``await client.allocate(...)`` gives an
        :class:`AsyncSandbox`; ``async with client.allocate(...) as sandbox:`` also releases
        it when the block ends."""
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
        return _Allocating(self, call)

    async def _allocate(self, call: Call) -> "AsyncSandbox":
        return AsyncSandbox(self, Allocation.from_json(await self._json(call)))

    async def get_allocation(self, allocation: AllocationRef) -> Allocation:
        p = _core.path("v1", "allocations", _core.allocation_id(allocation))
        return Allocation.from_json(await self._json(Call("GET", p, retry_on_transport=True)))

    async def list_allocations(
        self,
        *,
        pool: Optional[str] = None,
        session: Optional[str] = None,
        state: Optional[str] = None,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> List[Allocation]:
        params: List[Tuple[str, str]] = [
            (k, v) for k, v in (("pool", pool), ("session", session), ("state", state)) if v is not None
        ]
        params += [(f"metadata.{k}", str(v)) for k, v in (metadata or {}).items()]
        items = await self._json(Call("GET", "/v1/allocations", params=params, retry_on_transport=True))
        return [Allocation.from_json(a) for a in items]

    async def wait_active(self, allocation: AllocationRef, timeout: Optional[float] = None) -> Allocation:
        """As :meth:`warmpool.Client.wait_active`."""
        import asyncio
        import time

        aid = _core.allocation_id(allocation)
        start = time.monotonic()
        pause, longest = _core.PENDING_POLL
        while True:
            try:
                a = await self.get_allocation(aid)
            except NotFoundError:
                return Allocation.from_json({"id": aid, "session_id": "", "pool": "", "state": "cancelled"})
            if a.state != "pending":
                return a
            if timeout is not None and time.monotonic() - start > timeout:
                raise TimeoutError(_core.path("v1", "allocations", aid), timeout)
            await asyncio.sleep(pause)
            pause = min(pause * 2, longest)

    async def renew(self, allocation: AllocationRef, lease_seconds: Optional[int] = None) -> Allocation:
        body = {} if lease_seconds is None else {"lease_seconds": lease_seconds}
        p = _core.path("v1", "allocations", _core.allocation_id(allocation), "renew")
        return Allocation.from_json(await self._json(Call("POST", p, json=body)))

    async def release(self, allocation: AllocationRef) -> Allocation:
        p = _core.path("v1", "allocations", _core.allocation_id(allocation))
        return Allocation.from_json(await self._json(Call("DELETE", p)))

    # ---- using the container ----

    async def exec(
        self,
        allocation: AllocationRef,
        command: Union[str, Sequence[str]],
        *,
        env: Optional[Mapping[str, str]] = None,
        working_dir: Optional[str] = None,
        timeout_secs: Optional[int] = None,
    ) -> ExecResult:
        call = Call(
            "POST",
            _core.path("v1", "allocations", _core.allocation_id(allocation), "exec"),
            json=_core.exec_body(command, env, working_dir, timeout_secs),
            timeout=_core.exec_timeout(timeout_secs, self.request_timeout),
        )
        return ExecResult.from_json(await self._json(call))

    async def exec_stream(
        self,
        allocation: AllocationRef,
        command: Union[str, Sequence[str]],
        *,
        env: Optional[Mapping[str, str]] = None,
        working_dir: Optional[str] = None,
        timeout_secs: Optional[int] = None,
    ) -> AsyncIterator[ExecEvent]:
        call = Call(
            "POST",
            _core.path("v1", "allocations", _core.allocation_id(allocation), "exec"),
            params=[("stream", "true")],
            json=_core.exec_body(command, env, working_dir, timeout_secs),
            headers={"Accept": "application/x-ndjson"},
            timeout=_core.exec_timeout(timeout_secs, self.request_timeout),
            stream=True,
        )
        async with self._stream(call) as (resp, url):
            async for line in resp.aiter_lines():
                ev = _core.exec_event(url, line)
                if ev is not None:
                    yield ev

    async def upload(
        self, allocation: AllocationRef, path: str, data: Any, *, archive: bool = False
    ) -> FileWritten:
        call = Call(
            "PUT",
            _core.path("v1", "allocations", _core.allocation_id(allocation), "files"),
            params=_core.files_params(path, archive),
            content=_core.as_bytes(data),
            headers={"Content-Type": "application/x-tar" if archive else "application/octet-stream"},
            timeout=max(self.request_timeout, 120.0),
        )
        return FileWritten.from_json(await self._json(call))

    async def download(self, allocation: AllocationRef, path: str, *, archive: bool = False) -> bytes:
        chunks = [c async for c in self.iter_download(allocation, path, archive=archive)]
        return b"".join(chunks)

    async def iter_download(
        self, allocation: AllocationRef, path: str, *, archive: bool = False
    ) -> AsyncIterator[bytes]:
        call = Call(
            "GET",
            _core.path("v1", "allocations", _core.allocation_id(allocation), "files"),
            params=_core.files_params(path, archive),
            headers={"Accept": "*/*"},
            timeout=self.stream_idle_timeout,
            stream=True,
            retry_on_transport=True,
        )
        async with self._stream(call) as (resp, url):
            try:
                async for chunk in resp.aiter_bytes():
                    yield chunk
            except httpx.TransportError as e:
                raise TransportError(url, str(e)) from e

    async def logs(
        self, allocation: AllocationRef, *, follow: bool = False, tail: Optional[int] = None
    ) -> AsyncIterator[Union[LogLine, LogsDropped]]:
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
        async with self._stream(call) as (resp, url):
            try:
                async for line in resp.aiter_lines():
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

    # ---- sending (the rules of warmpool._core) ----

    def _timeout(self, call: Call) -> httpx.Timeout:
        total = call.timeout if call.timeout is not None else self.request_timeout
        return httpx.Timeout(total, connect=min(self._connect_timeout, total))

    async def _send(self, call: Call) -> Tuple[httpx.Response, str]:
        n = len(self.urls)
        start = self._preferred % n
        unreachable: List[Tuple[str, str]] = []
        fallback: Optional[WarmpoolError] = None
        for k in range(n):
            idx = (start + k) % n
            base = self.urls[idx]
            url = base + call.path
            req = self._http.build_request(
                call.method,
                url,
                params=call.params or None,
                json=call.json if call.content is None else None,
                content=call.content,
                headers={"Accept": "application/json", **call.headers},
                timeout=self._timeout(call),
            )
            try:
                resp = await self._http.send(req, stream=call.stream)
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
                err = await self._error(resp, url)
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

    async def _error(self, resp: httpx.Response, url: str) -> _errors.APIError:
        try:
            body = await resp.aread()
        finally:
            await resp.aclose()
        return error_from_response(resp.status_code, body, resp.headers, url)

    async def _json(self, call: Call) -> Any:
        resp, url = await self._send(call)
        if resp.status_code >= 300:
            raise await self._error(resp, url)
        try:
            body = await resp.aread()
        except httpx.TimeoutException:
            raise TimeoutError(url, call.timeout or self.request_timeout) from None
        except httpx.TransportError as e:
            raise TransportError(url, str(e)) from e
        return _core.decode_json(url, resp.status_code, body)

    @asynccontextmanager
    async def _stream(self, call: Call) -> AsyncIterator[Tuple[httpx.Response, str]]:
        resp, url = await self._send(call)
        try:
            if resp.status_code >= 300:
                raise await self._error(resp, url)
            yield resp, url
        finally:
            await resp.aclose()


class _Allocating:
    """``client.allocate(...)``: awaitable (an :class:`AsyncSandbox`), or an async context
    manager that releases the sandbox when the block ends."""

    def __init__(self, client: AsyncClient, call: Call) -> None:
        self._client = client
        self._call = call
        self._sandbox: Optional[AsyncSandbox] = None

    def __await__(self) -> Generator[Any, None, "AsyncSandbox"]:
        return self._client._allocate(self._call).__await__()

    async def __aenter__(self) -> "AsyncSandbox":
        self._sandbox = await self._client._allocate(self._call)
        return self._sandbox

    async def __aexit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        if self._sandbox is not None:
            await self._sandbox.__aexit__(exc_type, exc, tb)


class AsyncSandbox:
    """The asynchronous twin of :class:`warmpool.Sandbox`."""

    def __init__(self, client: AsyncClient, allocation: Allocation) -> None:
        self.client = client
        self.allocation = allocation

    def __getattr__(self, name: str) -> Any:
        if name == "allocation":
            raise AttributeError(name)
        return getattr(self.allocation, name)

    def __repr__(self) -> str:
        a = self.allocation
        return f"AsyncSandbox(id={a.id!r}, pool={a.pool!r}, url={a.url!r}, state={a.state!r})"

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        try:
            await self.release()
        except (NotFoundError, EndedError):
            pass
        except WarmpoolError as e:
            if exc is None:
                raise
            if hasattr(exc, "add_note"):
                exc.add_note(f"releasing allocation {self.allocation.id} failed too: {e}")

    async def wait_active(self, timeout: Optional[float] = None) -> Allocation:
        self.allocation = self._keep_access(await self.client.wait_active(self.allocation.id, timeout))
        return self.allocation

    async def refresh(self) -> Allocation:
        self.allocation = self._keep_access(await self.client.get_allocation(self.allocation.id))
        return self.allocation

    async def renew(self, lease_seconds: Optional[int] = None) -> Allocation:
        self.allocation = self._keep_access(await self.client.renew(self.allocation.id, lease_seconds))
        return self.allocation

    async def release(self) -> Allocation:
        self.allocation = self._keep_access(await self.client.release(self.allocation.id))
        return self.allocation

    async def exec(self, command: Union[str, Sequence[str]], **kw: Any) -> ExecResult:
        return await self.client.exec(self.allocation.id, command, **kw)

    def exec_stream(self, command: Union[str, Sequence[str]], **kw: Any) -> AsyncIterator[ExecEvent]:
        return self.client.exec_stream(self.allocation.id, command, **kw)

    async def upload(self, path: str, data: Any, *, archive: bool = False) -> FileWritten:
        return await self.client.upload(self.allocation.id, path, data, archive=archive)

    async def download(self, path: str, *, archive: bool = False) -> bytes:
        return await self.client.download(self.allocation.id, path, archive=archive)

    def logs(
        self, *, follow: bool = False, tail: Optional[int] = None
    ) -> AsyncIterator[Union[LogLine, LogsDropped]]:
        return self.client.logs(self.allocation.id, follow=follow, tail=tail)

    def _keep_access(self, new: Allocation) -> Allocation:
        old = self.allocation.access
        if old is not None and old.token and (new.access is None or not new.access.token):
            merged = old if new.access is None else replace(new.access, token=old.token)
            new = replace(new, access=merged)
        return new
