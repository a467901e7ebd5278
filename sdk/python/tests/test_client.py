"""The sync client against a live cluster: pools, allocate, renew, release, the context
manager, typed errors, failover across member URLs."""

from __future__ import annotations

import socket

import pytest

import warmpool
from conftest import DEADLINE, container_answers, require_route, unique, wait_until


def test_finds_its_key_in_the_token_file_and_lists_pools(client: warmpool.Client, pool: str):
    who = client.whoami()
    assert who["role"] == "admin"
    pools = client.list_pools()
    assert pool in [p.name for p in pools]
    p = client.get_pool(pool)
    assert p.name == pool
    assert p.image.startswith("warmpool-demo")
    assert p.wanted >= 1 and p.counts.total >= 1  # other tests may hold its warm ones now


def test_allocate_answers_on_its_address_renew_and_release(client: warmpool.Client, pool: str, session_id: str):
    key = unique("sdk-key")
    sandbox = client.allocate(pool, session_id=session_id, lease_seconds=60, wait_ms=30_000, idempotency_key=key)
    try:
        assert sandbox.active and sandbox.pool == pool and sandbox.session_id == session_id
        assert sandbox.idempotency_key == key
        assert sandbox.url and sandbox.ipv6 and sandbox.port
        assert container_answers(sandbox.url)

        # The same key answers the same allocation, never a second one.
        again = client.allocate(pool, session_id=session_id, lease_seconds=60, idempotency_key=key)
        assert again.id == sandbox.id

        got = client.get_allocation(sandbox.id)
        assert got.id == sandbox.id and got.active
        mine = client.list_allocations(pool=pool, session=session_id, state="active")
        assert [a.id for a in mine] == [sandbox.id]

        before = sandbox.expires_at
        renewed = sandbox.renew(lease_seconds=120)
        assert renewed.expires_at > before
        assert sandbox.expires_at == renewed.expires_at
    finally:
        released = sandbox.release()
    assert released.state == "released" and released.release_reason == "client"
    assert client.get_allocation(sandbox.id).state == "released"
    assert client.list_allocations(session=session_id, state="active") == []
    # Destroyed, never reused: its address stops answering.
    wait_until("the released container to stop answering", lambda: not _answers_quietly(sandbox.url))


def _answers_quietly(url: str) -> bool:
    try:
        return container_answers(url)
    except Exception:  # noqa: BLE001 - refused or unreachable: gone
        return False


def test_the_context_manager_releases_at_the_end_of_the_block(client: warmpool.Client, pool: str, session_id: str):
    with client.allocate(pool, session_id=session_id, wait_ms=30_000) as sandbox:
        assert container_answers(sandbox.url)
        held = sandbox.id
    assert client.get_allocation(held).state == "released"


def test_the_context_manager_releases_when_the_block_raises(client: warmpool.Client, pool: str, session_id: str):
    class Boom(Exception):
        pass

    held = None
    with pytest.raises(Boom):
        with client.allocate(pool, session_id=session_id, wait_ms=30_000) as sandbox:
            held = sandbox.id
            raise Boom()
    assert held is not None
    a = client.get_allocation(held)
    assert a.state == "released" and a.release_reason == "client"


def test_a_wrong_key_is_an_authentication_error(base_url: str, pool: str):
    bad = "wpk_000000000000_" + "0" * 64
    with warmpool.Client(base_url, token=bad) as c:
        with pytest.raises(warmpool.AuthenticationError) as e:
            c.allocate(pool, wait_ms=0)
    assert e.value.status == 401 and e.value.code == "unauthorized"
    assert isinstance(e.value, warmpool.APIError) and e.value.message


def test_an_unknown_pool_is_a_not_found_error(client: warmpool.Client):
    missing = unique("no-such-pool")
    with pytest.raises(warmpool.NotFoundError) as e:
        client.allocate(missing, wait_ms=0)
    assert e.value.status == 404 and e.value.code == "not_found"
    with pytest.raises(warmpool.NotFoundError):
        client.get_pool(missing)
    with pytest.raises(warmpool.NotFoundError):
        client.get_allocation("0190f0a0-0000-7000-8000-000000000000")


def test_bad_input_is_a_bad_request_error(client: warmpool.Client, pool: str):
    with pytest.raises(warmpool.BadRequestError) as e:
        client.allocate(pool, wait_ms=10_000_000)
    assert e.value.status == 400 and e.value.code == "bad_request"


def test_no_warm_container_is_no_capacity_with_retry_after(client: warmpool.Client, pool: str, base_url: str):
    # A pool that never has a warm container: made and removed here with raw admin calls.
    import httpx

    name = unique("sdk-empty")
    token = client._token
    h = {"Authorization": f"Bearer {token}"}
    spec = {"name": name, "image": "warmpool-demo:latest", "min_warm": 0, "max_warm": 0}
    r = httpx.post(f"{base_url}/v1/pools", json=spec, headers=h, timeout=10)
    assert r.status_code == 201, r.text
    try:
        with pytest.raises(warmpool.NoCapacityError) as e:
            client.allocate(name, wait_ms=0)
        assert e.value.status == 503 and e.value.code == "no_capacity"
        assert e.value.retry_after is not None and e.value.retry_after >= 1
        assert isinstance(e.value, warmpool.UnavailableError)
    finally:
        httpx.delete(f"{base_url}/v1/pools/{name}", headers=h, timeout=10)


def _dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}"


def test_a_member_that_refuses_connections_is_passed_over(base_url: str, pool: str, session_id: str):
    dead = _dead_url()
    with warmpool.Client([dead, base_url]) as c:
        with c.allocate(pool, session_id=session_id, wait_ms=30_000) as sandbox:
            assert sandbox.active
            assert c.current_url == base_url  # the live one answered, and is tried first now
    with warmpool.Client(dead) as c:
        with pytest.raises(warmpool.UnreachableError) as e:
            c.list_pools()
        assert e.value.attempts and e.value.attempts[0][0] == dead


def test_settings_and_metadata_at_claim(client: warmpool.Client, pool: str, session_id: str, openapi: dict):
    props = openapi["components"]["schemas"]["CreateAllocation"]["properties"]
    if "env" not in props:
        pytest.skip("the server's /v1/openapi.json has no env on CreateAllocation (not merged into this build)")
    require_route(openapi, "/v1/allocations/{id}/exec", "post")
    team = unique("team")
    secret = unique("s3cret")
    with client.allocate(
        pool,
        session_id=session_id,
        wait_ms=30_000,
        env={"MODE": "sdk"},
        secrets={"API_TOKEN": secret},
        metadata={"team": team},
        wait_for_settings=True,
    ) as sandbox:
        assert sandbox.settings == "applied"
        assert sandbox.metadata == {"team": team}
        assert secret not in str(sandbox.raw)
        listed = client.list_allocations(metadata={"team": team})
        assert [a.id for a in listed] == [sandbox.id]
        assert secret not in str([a.raw for a in listed])
        out = sandbox.exec('echo "$MODE $API_TOKEN"')
        assert out.exit_code == 0 and out.stdout == f"sdk {secret}\n"


def _new_key(base_url: str, admin: warmpool.Client, role: str, tenant: str) -> str:
    import httpx

    r = httpx.post(
        f"{base_url}/v1/keys",
        json={"name": unique(f"sdk-{role}"), "role": role, "tenant": tenant},
        headers={"Authorization": f"Bearer {admin._token}"},
        timeout=10,
    )
    assert r.status_code in (200, 201), r.text
    return r.json()["token"]


def test_another_tenant_gets_not_found_and_a_viewer_is_forbidden(
    client: warmpool.Client, base_url: str, pool: str, session_id: str, openapi: dict
):
    tenant = unique("sdk-tenant")
    other = warmpool.Client(base_url, token=_new_key(base_url, client, "user", tenant))
    viewer = warmpool.Client(base_url, token=_new_key(base_url, client, "viewer", tenant))
    try:
        with client.allocate(pool, session_id=session_id, wait_ms=30_000) as sandbox:
            # Someone else's allocation answers exactly like one that does not exist.
            with pytest.raises(warmpool.NotFoundError):
                other.get_allocation(sandbox.id)
            with pytest.raises(warmpool.NotFoundError):
                other.renew(sandbox.id)
            with pytest.raises(warmpool.NotFoundError):
                other.release(sandbox.id)
            if warmpool._core.openapi_has(openapi, "/v1/allocations/{id}/exec", "post"):
                with pytest.raises(warmpool.NotFoundError):
                    other.exec(sandbox.id, "true")
            assert sandbox.id not in [a.id for a in other.list_allocations()]
            assert client.get_allocation(sandbox.id).active  # untouched

            with pytest.raises(warmpool.PermissionDeniedError) as e:
                viewer.allocate(pool, wait_ms=0)
            assert e.value.status == 403 and e.value.code == "forbidden"

            # The tenant's own allocation is its own.
            with other.allocate(pool, session_id=unique("sdk-session"), wait_ms=30_000) as mine:
                assert mine.tenant == tenant
                assert other.get_allocation(mine.id).active
    finally:
        other.close()
        viewer.close()


def test_async_allocation_is_pending_then_active_cancellable_and_located(client: warmpool.Client, base_url: str):
    # Pools made and removed here with raw admin calls: one empty (an async allocation makes it
    # grow), one no node may host (what is asked of it stays pending).
    import httpx

    h = {"Authorization": f"Bearer {client._token}"}
    empty, stuck = unique("sdk-async"), unique("sdk-mars")
    for name, extra in ((empty, {}), (stuck, {"constraints": {"region": "mars"}})):
        spec = {"name": name, "image": "warmpool-demo:latest", "min_warm": 0, "max_lifetime_secs": 600, **extra}
        spec["health"] = {"probe": {"kind": "http", "path": "/healthz"}, "interval_ms": 300}
        r = httpx.post(f"{base_url}/v1/pools", json=spec, headers=h, timeout=10)
        assert r.status_code == 201, r.text
    try:
        sandbox = client.allocate(empty, asynchronous=True, max_lifetime_secs=300)
        assert sandbox.pending or sandbox.active
        if sandbox.pending:
            assert sandbox.container_id == "" and sandbox.node == ""
            assert client.get_allocation(sandbox.id).state in ("pending", "active")
        a = sandbox.wait_active(timeout=DEADLINE)
        assert a.active and a.container_id and a.node and a.url
        assert sandbox.access and sandbox.access.token, "the token answered at the request is kept"
        assert container_answers(a.url)
        sandbox.release()

        waiting = client.allocate(stuck, asynchronous=True, idempotency_key=unique("k"))
        assert waiting.pending
        again = client.allocate(stuck, asynchronous=True, idempotency_key=waiting.idempotency_key)
        assert again.id == waiting.id
        assert [x.id for x in client.list_allocations(pool=stuck, state="pending")] == [waiting.id]
        with pytest.raises(warmpool.TimeoutError):
            client.wait_active(waiting.id, timeout=0.3)
        assert waiting.release().state == "cancelled"
        with pytest.raises(warmpool.NotFoundError):
            client.get_allocation(waiting.id)

        with pytest.raises(warmpool.NoMatchingNodeError) as e:
            client.allocate(empty, asynchronous=True, location={"region": ["ap", "sa"]})
        assert e.value.status == 409 and e.value.code == "no_matching_node"
        with pytest.raises(warmpool.BadRequestError):
            client.allocate(empty, asynchronous=True, max_lifetime_secs=601)
    finally:
        for name in (empty, stuck):
            httpx.delete(f"{base_url}/v1/pools/{name}", headers=h, timeout=10)
