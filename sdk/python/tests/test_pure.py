"""The parts without IO: error mapping, the SSE decoder, token and URL resolution, timestamps."""

from __future__ import annotations

import json

import pytest

import warmpool
from warmpool import _core
from warmpool.errors import error_from_response
from warmpool.models import parse_time


def body(code: str, message: str = "m") -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@pytest.mark.parametrize(
    "status,code,cls",
    [
        (400, "bad_request", warmpool.BadRequestError),
        (401, "unauthorized", warmpool.AuthenticationError),
        (403, "forbidden", warmpool.PermissionDeniedError),
        (404, "not_found", warmpool.NotFoundError),
        (409, "conflict", warmpool.ConflictError),
        (410, "ended", warmpool.EndedError),
        (413, "payload_too_large", warmpool.PayloadTooLargeError),
        (429, "over_quota", warmpool.OverQuotaError),
        (429, "rate_limited", warmpool.RateLimitedError),
        (503, "no_capacity", warmpool.NoCapacityError),
        (503, "no_quorum", warmpool.NoQuorumError),
        (503, "overloaded", warmpool.OverloadedError),
        (502, "agent_unavailable", warmpool.AgentUnavailableError),
        (500, "internal", warmpool.InternalServerError),
    ],
)
def test_error_codes_map_to_classes(status, code, cls):
    e = error_from_response(status, body(code, "why"), {"retry-after": "3"})
    assert type(e) is cls and e.status == status and e.code == code and e.message == "why"
    assert e.retry_after == 3.0


def test_an_unknown_code_or_a_foreign_body_falls_back_on_the_status():
    e = error_from_response(503, body("something_new"), {})
    assert type(e) is warmpool.UnavailableError and e.code == "something_new"
    e = error_from_response(502, b"<html>bad gateway</html>", {})
    assert isinstance(e, warmpool.APIError) and e.code == "http_502" and "bad gateway" in e.message
    assert error_from_response(418, b"", {}).code == "http_418"


def test_sse_decoder():
    d = _core.SSEDecoder()
    lines = [": keep-alive", "event: log", 'data: {"stream":"stdout",', 'data: "line":"x"}', "id: 7", "", ""]
    out = [ev for ev in map(d.feed, lines) if ev]
    assert out == [("log", '{"stream":"stdout",\n"line":"x"}', "7")]
    assert d.feed("retry: 1500") is None and d.retry_ms == 1500
    with pytest.raises(_core.LogsEnded):
        _core.log_item("u", "end", '{"reason":"done"}')
    assert _core.log_item("u", "dropped", '{"dropped":4}') == warmpool.LogsDropped(4)


def test_token_resolution(tmp_path, monkeypatch):
    for v in ("WARMPOOL_TOKEN", "POOLCTL_TOKEN", "WARMPOOL_TOKEN_FILE", "POOLCTL_TOKEN_FILE"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "t"
    good.write_text("wpk_a1_b2\n")
    junk = tmp_path / "junk"
    junk.write_text("not a token\n")
    assert _core.resolve_token("given", None) == "given"
    monkeypatch.setenv("WARMPOOL_TOKEN_FILE", str(junk))
    monkeypatch.setenv("POOLCTL_TOKEN_FILE", str(good))
    assert _core.resolve_token(None, None) == "wpk_a1_b2"
    monkeypatch.setenv("POOLCTL_TOKEN", "from-env")
    assert _core.resolve_token(None, None) == "from-env"
    with pytest.raises(warmpool.ConfigError):
        _core.resolve_token(None, junk)


def test_urls(monkeypatch):
    monkeypatch.delenv("WARMPOOL_URL", raising=False)
    monkeypatch.delenv("POOLCTL_URL", raising=False)
    assert _core.resolve_urls(None) == ["http://127.0.0.1:7070"]
    assert _core.resolve_urls("a:1, https://b:2/") == ["http://a:1", "https://b:2"]
    monkeypatch.setenv("POOLCTL_URL", "c:3,d:4")
    assert _core.resolve_urls(None) == ["http://c:3", "http://d:4"]
    with pytest.raises(warmpool.ConfigError):
        _core.resolve_urls("ftp://x")


def test_allocate_always_carries_an_idempotency_key_and_a_long_enough_timeout():
    kw = dict(
        session_id=None, lease_seconds=None, idempotency_key=None, env=None, secrets=None,
        metadata=None, wait_for_settings=False, tenant=None, request_timeout=10.0,
    )
    c = _core.allocate_call("p", wait_ms=30_000, **kw)
    assert c.json["idempotency_key"] and c.retry_on_transport and c.timeout == 40.0
    assert "env" not in c.json and "wait_for" not in c.json


def test_timestamps():
    t = parse_time("2026-01-02T03:04:05.678Z")
    assert (t.year, t.microsecond, t.utcoffset().total_seconds()) == (2026, 678000, 0)
    assert parse_time("2026-01-02T03:04:05.123456789Z").microsecond == 123456
    assert parse_time(None) is None


def test_a_timeout_is_also_the_builtin_timeout_error():
    import builtins

    e = warmpool.TimeoutError("http://m/v1/pools", 10.0)
    assert isinstance(e, builtins.TimeoutError) and isinstance(e, warmpool.WarmpoolError)
    assert "timed out after 10 s" in str(e)


def test_a_ca_file_that_cannot_be_used_is_a_config_error(tmp_path):
    with pytest.raises(warmpool.ConfigError):
        warmpool.Client("https://127.0.0.1:1", token="t", ca_cert=tmp_path / "missing.pem")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(warmpool.ConfigError):
        warmpool.AsyncClient("https://127.0.0.1:1", token="t", ca_cert=bad)


def test_an_allocation_reads_its_cost_and_keeps_fields_it_does_not_know():
    from warmpool.models import Allocation

    base = {"id": "a", "session_id": "s", "pool": "p", "container_id": "c", "node": "n",
            "port": 8080, "state": "active"}
    assert Allocation.from_json({**base, "cost": 0.25}).cost == 0.25
    assert Allocation.from_json(base).cost is None
    a = Allocation.from_json({**base, "from_a_newer_server": 1})
    assert a.raw["from_a_newer_server"] == 1


def test_async_location_and_lifetime_go_in_the_body_only_when_given():
    from warmpool.models import Allocation

    kw = dict(
        session_id=None, lease_seconds=None, wait_ms=None, idempotency_key=None, env=None, secrets=None,
        metadata=None, wait_for_settings=False, tenant=None, request_timeout=10.0,
    )
    plain = _core.allocate_call("p", **kw).json
    assert "async" not in plain and "location" not in plain and "max_lifetime_secs" not in plain
    c = _core.allocate_call(
        "p", asynchronous=True, location={"region": ("eu", "us"), "zone": "a"}, max_lifetime_secs=60, **kw
    ).json
    assert c["async"] is True and c["max_lifetime_secs"] == 60
    assert c["location"] == {"region": ["eu", "us"], "zone": "a"}
    # A pending allocation has no container, node or port yet.
    p = Allocation.from_json({"id": "a", "session_id": "s", "pool": "p", "state": "pending", "location": {"region": "eu"}})
    assert p.pending and not p.active and p.container_id == "" and p.port == 0
    assert p.location == {"region": "eu"}
    assert issubclass(warmpool.NoMatchingNodeError, warmpool.ConflictError)
