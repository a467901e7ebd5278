"""Schemathesis hooks for deploy/fuzz-api.sh.

The fuzzer holds an admin key, so it may do anything an operator may. Two guards keep the run
about the API rather than about what an operator may break on purpose:

- The pool made before the run (FUZZ_KEEP_POOL) and the two keys the run depends on
  (FUZZ_KEEP_KEYS: the bootstrap key and the fuzzer's own) are never the target of a write:
  a request that names them in its path is pointed at a name nobody has. Pools the fuzzer
  makes itself are fair game, and are deleted after the run.
- The fuzz cluster's one host is simulated (containers in memory), and the run is a couple
  of minutes on two cores: a valid pool size (`min_warm`, `max_warm`, `max_total` up to
  100000) is lowered to at most 4, and a valid `wait_ms` above 1000 to 1000 (fuzzed pools
  often stay empty, and a waiting allocation waits to the end). Values over the documented
  limits are left alone: the server must refuse them, and does.

One more patch is about the interpreter, not the API: Hypothesis describes each filter's lambda
by parsing its source with `ast.parse`, and CPython 3.11 cannot build two syntax trees at once
in two threads (it raises "SystemError: AST constructor recursion depth mismatch"). With two
workers that dropped whole operations from the coverage phase. `ast.parse` runs one call at a
time here; the GIL serialises that code anyway.
"""

import ast
import os
import threading

import schemathesis

_parse = ast.parse
_parsing = threading.Lock()


def _parse_alone(*args, **kwargs):
    with _parsing:
        return _parse(*args, **kwargs)


ast.parse = _parse_alone

KEEP_POOL = os.environ.get("FUZZ_KEEP_POOL", "")
KEEP_KEYS = {k for k in os.environ.get("FUZZ_KEEP_KEYS", "").split(",") if k}
MAX_WAIT_MS = 60_000
MAX_POOL_SIZE = 100_000
SIZE_FIELDS = ("min_warm", "max_warm", "max_total")
# Cases pointed away from a guarded pool or key (above): their 404 is this hook's doing.
GUARDED = set()


def _lower(body, field, limit, to):
    value = body.get(field)
    if isinstance(value, int) and not isinstance(value, bool) and to < value <= limit:
        body[field] = to


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    method = case.operation.method.upper()
    path = case.operation.path
    params = case.path_parameters or {}
    if path == "/v1/pools/{name}" and method in ("PUT", "DELETE") and params.get("name") == KEEP_POOL:
        params["name"] = "fuzz-guarded"
        if isinstance(case.body, dict) and case.body.get("name") == KEEP_POOL:
            case.body["name"] = "fuzz-guarded"
        GUARDED.add(case.id)
    if path == "/v1/keys/{id}" and method == "DELETE" and params.get("id") in KEEP_KEYS:
        params["id"] = "000000000000"
        GUARDED.add(case.id)
    if path in ("/v1/pools", "/v1/pools/{name}") and method in ("POST", "PUT") and isinstance(case.body, dict):
        for field in SIZE_FIELDS:
            _lower(case.body, field, MAX_POOL_SIZE, 4)
    if path == "/v1/allocations" and method == "POST" and isinstance(case.body, dict):
        _lower(case.body, "wait_ms", MAX_WAIT_MS, 1000)


# DELETE /v1/allocations/{id} releases an allocation, which stays on record (state "released",
# with its reason) as documented; schemathesis's use_after_free reads every DELETE as a
# deletion. This check is use_after_free for everything but allocations (pools above all:
# a deleted pool must answer 404).
from schemathesis.specs.openapi.checks import use_after_free as _use_after_free  # noqa: E402


@schemathesis.check
def use_after_free_except_released_allocations(ctx, response, case):
    if case.operation.path.startswith("/v1/allocations/"):
        return None
    return _use_after_free(ctx, response, case)


# A request the guard above pointed at a name nobody has answers 404 by design; schemathesis's
# ensure_resource_availability would read that as "a resource just made is gone" when the
# request came through a link (e.g. a key made, then DELETE /v1/keys/{id} with a guarded id).
from schemathesis.specs.openapi.checks import ensure_resource_availability as _ensure_resource_availability  # noqa: E402


@schemathesis.check
def ensure_resource_availability_except_guarded(ctx, response, case):
    if case.id in GUARDED:
        return None
    return _ensure_resource_availability(ctx, response, case)
