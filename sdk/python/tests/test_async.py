"""The async client does what the sync one does, against the same live cluster."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

import warmpool
from conftest import DEADLINE, require_route, unique


async def _until(what, f, timeout=DEADLINE):
    end = time.monotonic() + timeout
    while True:
        try:
            if await f():
                return
        except Exception:  # noqa: BLE001
            pass
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.1)


async def _answers(url: str) -> bool:
    async with httpx.AsyncClient(timeout=2) as h:
        r = await h.get(url.rstrip("/") + "/healthz")
        return r.status_code == 200


@pytest.mark.asyncio
async def test_async_allocate_renew_release(base_url: str, pool: str):
    session = unique("sdk-async")
    async with warmpool.AsyncClient(base_url) as client:
        assert pool in [p.name for p in await client.list_pools()]
        sandbox = await client.allocate(pool, session_id=session, lease_seconds=60, wait_ms=30_000)
        try:
            assert isinstance(sandbox, warmpool.AsyncSandbox) and sandbox.active
            assert await _answers(sandbox.url)
            before = sandbox.expires_at
            assert (await sandbox.renew(120)).expires_at > before
            assert [a.id for a in await client.list_allocations(session=session, state="active")] == [sandbox.id]
        finally:
            released = await sandbox.release()
        assert released.state == "released"
        assert (await client.get_allocation(sandbox.id)).state == "released"

        async def gone():
            try:
                return not await _answers(sandbox.url)
            except httpx.HTTPError:
                return True

        await _until("the released container to stop answering", gone)


@pytest.mark.asyncio
async def test_async_context_manager_releases_also_on_exception(base_url: str, pool: str):
    async with warmpool.AsyncClient(base_url) as client:
        async with client.allocate(pool, session_id=unique("sdk-async"), wait_ms=30_000) as sandbox:
            assert await _answers(sandbox.url)
            first = sandbox.id
        assert (await client.get_allocation(first)).state == "released"

        held = None
        with pytest.raises(RuntimeError, match="boom"):
            async with client.allocate(pool, session_id=unique("sdk-async"), wait_ms=30_000) as sandbox:
                held = sandbox.id
                raise RuntimeError("boom")
        a = await client.get_allocation(held)
        assert a.state == "released" and a.release_reason == "client"


@pytest.mark.asyncio
async def test_async_typed_errors(base_url: str, pool: str):
    async with warmpool.AsyncClient(base_url, token="wpk_000000000000_" + "0" * 64) as bad:
        with pytest.raises(warmpool.AuthenticationError) as e:
            await bad.allocate(pool, wait_ms=0)
        assert e.value.status == 401
    async with warmpool.AsyncClient(base_url) as client:
        with pytest.raises(warmpool.NotFoundError) as e:
            await client.allocate(unique("no-such-pool"), wait_ms=0)
        assert e.value.code == "not_found"


@pytest.mark.asyncio
async def test_async_exec_files_and_logs(base_url: str, pool: str, openapi: dict):
    require_route(openapi, "/v1/allocations/{id}/exec", "post")
    require_route(openapi, "/v1/allocations/{id}/files", "put")
    require_route(openapi, "/v1/allocations/{id}/logs", "get")
    marker = unique("sdk-alog")
    async with warmpool.AsyncClient(base_url) as client:
        async with client.allocate(pool, session_id=unique("sdk-async"), wait_ms=30_000) as sandbox:
            r = await sandbox.exec("echo hi; exit 4")
            assert (r.stdout, r.exit_code) == ("hi\n", 4)
            events = [e async for e in sandbox.exec_stream(["sh", "-c", "echo a; echo b"])]
            assert "".join(e.data for e in events if e.type == "output") == "a\nb\n"
            assert events[-1].type == "exit" and events[-1].exit_code == 0

            await sandbox.upload("/tmp/async.txt", "async bytes\n")
            assert await sandbox.download("/tmp/async.txt") == b"async bytes\n"

            async def follow():
                async for item in sandbox.logs(follow=True, tail=0):
                    if isinstance(item, warmpool.LogLine) and item.line == marker:
                        return item

            task = asyncio.create_task(follow())

            async def printed():
                await sandbox.exec(f"echo {marker} > /proc/1/fd/1")
                return task.done()

            await _until("the async follower to see the printed line", printed, timeout=15)
            assert (await task) == warmpool.LogLine("stdout", marker)
