"""Using the container: exec (whole and streamed), files up and down, live logs (SSE), and the
gateway URL with its token. Each test skips only when the server's OpenAPI document lacks
its route (a branch not merged into the build under test)."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import threading
import time
import uuid

import httpx
import pytest

import warmpool
from conftest import require_route, unique, wait_until

EXEC = "/v1/allocations/{id}/exec"
FILES = "/v1/allocations/{id}/files"
LOGS = "/v1/allocations/{id}/logs"
GATEWAY = "/v1/gateway/allocations/{id}"


def test_exec_returns_output_and_exit_code(client: warmpool.Client, pool: str, session_id: str, openapi: dict):
    require_route(openapi, EXEC, "post")
    with client.allocate(pool, session_id=session_id, wait_ms=30_000) as sandbox:
        r = sandbox.exec("echo out; echo err >&2; exit 7")
        assert (r.stdout, r.stderr, r.exit_code, r.timed_out) == ("out\n", "err\n", 7, False)
        assert not r.ok
        r = sandbox.exec(["sh", "-c", 'echo "$GREETING from $(pwd)"'], env={"GREETING": "hi"}, working_dir="/tmp")
        assert r.ok and r.stdout == "hi from /tmp\n"
        r = sandbox.exec("sleep 5", timeout_secs=1)
        assert r.timed_out and r.exit_code is None


def test_exec_streams_output_then_the_exit(client: warmpool.Client, pool: str, session_id: str, openapi: dict):
    require_route(openapi, EXEC, "post")
    with client.allocate(pool, session_id=session_id, wait_ms=30_000) as sandbox:
        events = list(sandbox.exec_stream("for i in 1 2 3; do echo line$i; done; echo oops >&2; exit 3"))
        out = "".join(e.data for e in events if e.type == "output" and e.stream == "stdout")
        err = "".join(e.data for e in events if e.type == "output" and e.stream == "stderr")
        assert out == "line1\nline2\nline3\n" and err == "oops\n"
        assert events[-1].type == "exit" and events[-1].exit_code == 3


def test_files_upload_then_download_gives_the_same_bytes(client: warmpool.Client, pool: str, session_id: str, openapi: dict):
    require_route(openapi, FILES, "put")
    require_route(openapi, FILES, "get")
    data = os.urandom(3 * 1024 * 1024 + 17)
    with client.allocate(pool, session_id=session_id, wait_ms=30_000) as sandbox:
        written = sandbox.upload("/tmp/sdk/data.bin", data)
        assert written.bytes == len(data) and written.path == "/tmp/sdk/data.bin"
        assert sandbox.download("/tmp/sdk/data.bin") == data
        assert sandbox.exec("wc -c < /tmp/sdk/data.bin").stdout.strip() == str(len(data))

        # A tar archive up, unpacked into a directory, and back.
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, body in (("a.txt", b"alpha\n"), ("sub/b.txt", b"beta\n")):
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
        up = sandbox.upload("/tmp/sdk/tree", buf.getvalue(), archive=True)
        assert up.archive
        assert sandbox.exec("cat /tmp/sdk/tree/sub/b.txt").stdout == "beta\n"
        back = tarfile.open(fileobj=io.BytesIO(sandbox.download("/tmp/sdk/tree", archive=True)))
        names = {m.name.lstrip("./") for m in back.getmembers() if m.isfile()}
        assert any(n.endswith("a.txt") for n in names) and any(n.endswith("sub/b.txt") for n in names)

        with pytest.raises(warmpool.NotFoundError):
            sandbox.download("/tmp/sdk/" + uuid.uuid4().hex)


def test_logs_stream_a_printed_line(client: warmpool.Client, pool: str, session_id: str, openapi: dict):
    require_route(openapi, LOGS, "get")
    marker = unique("sdk-log")
    seen = []
    failed = []
    with client.allocate(pool, session_id=session_id, wait_ms=30_000) as sandbox:
        def follow():
            try:
                want = {warmpool.LogLine("stdout", marker), warmpool.LogLine("stderr", marker + "-err")}
                for item in sandbox.logs(follow=True, tail=0):
                    seen.append((time.monotonic(), item))
                    want.discard(item)
                    if not want:  # both, in either order: stdout and stderr are separate pipes
                        return
                failed.append("the stream ended")
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                failed.append(repr(e))

        t = threading.Thread(target=follow, daemon=True)
        t.start()
        # Print until the follower has the line (it may connect after the first print).
        start = time.monotonic()
        def printed_and_seen():
            assert not failed, f"the follower stopped: {failed}"
            return sandbox.exec(f"echo {marker} > /proc/1/fd/1; echo {marker}-err > /proc/1/fd/2").ok and any(
                getattr(i, "line", None) == marker for _, i in seen
            )

        try:
            wait_until("the follower to see the printed line", printed_and_seen, timeout=15)
        except BaseException:
            pytest.fail(f"the follower saw {seen!r}; {_docker_logs_say(sandbox.container_id, marker)}")
        t.join(timeout=10)
        assert not t.is_alive()
        lines = [i for _, i in seen]
        assert not failed, failed
        assert warmpool.LogLine("stdout", marker) in lines
        assert warmpool.LogLine("stderr", marker + "-err") in lines
        assert seen[0][0] - start < 15

        # Without follow: what is there now, then the stream ends by itself.
        past = [i.line for i in sandbox.logs(tail=50) if isinstance(i, warmpool.LogLine)]
        assert marker in past


def _docker_logs_say(container_id: str, marker: str) -> str:
    """For a failure message: whether Docker's own log of the container has the marker."""
    try:
        ids = subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label=io.warmpool.id={container_id}"],
            capture_output=True, text=True, timeout=10,
        ).stdout.split()
        if not ids:
            return "docker has no such container"
        out = subprocess.run(["docker", "logs", ids[0]], capture_output=True, text=True, timeout=10)
        return f"docker logs {ids[0]} has the line: {marker in out.stdout}, {out.stdout.count(marker)} times"
    except (OSError, subprocess.SubprocessError) as e:
        return f"docker logs could not be read: {e}"


def test_session_io_after_release_is_ended(client: warmpool.Client, pool: str, session_id: str, openapi: dict):
    require_route(openapi, EXEC, "post")
    sandbox = client.allocate(pool, session_id=session_id, wait_ms=30_000)
    sandbox.release()
    with pytest.raises(warmpool.EndedError) as e:
        sandbox.exec("true")
    assert e.value.status == 410 and e.value.code == "ended"


def test_the_gateway_url_with_its_token(client: warmpool.Client, pool: str, session_id: str, openapi: dict):
    require_route(openapi, GATEWAY, "get")
    with client.allocate(pool, session_id=session_id, wait_ms=30_000) as sandbox:
        access = sandbox.access
        assert access is not None and access.token and access.token.startswith("wpa_"), sandbox.raw
        url = access.url_for()
        assert url == next(iter(access.urls.values())) and f"/s/{sandbox.id}/" in url
        r = wait_until(
            "the container to answer through the gateway",
            lambda: (lambda r: r if r.status_code == 200 else None)(
                httpx.get(url.rstrip("/") + "/healthz", headers=access.headers, timeout=2)
            ),
        )
        assert r.text.strip() == "ok"
        assert httpx.get(url, timeout=2).status_code == 401
        # A later read has the URLs but not the token; the sandbox keeps the one it was given.
        assert sandbox.refresh() and sandbox.access.token == access.token
    wait_until(
        "the gateway to refuse the released allocation",
        lambda: httpx.get(url, headers=access.headers, timeout=2).status_code == 404,
        timeout=5,
    )
