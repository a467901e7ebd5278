"""Schemathesis hooks for deploy/fuzz-api.sh.

The fuzzer holds an admin key, so it may do anything an operator may. Two guards keep the run
about the API rather than about what an operator may break on purpose:

- The pool made before the run (FUZZ_KEEP_POOL) and the two keys the run depends on
  (FUZZ_KEEP_KEYS: the bootstrap key and the fuzzer's own) are never the target of a write:
  a request that names them in its path is pointed at a name nobody has. Pools the fuzzer
  makes itself are fair game, and are deleted after the run.
- The fuzz cluster has no Docker host, so no container ever becomes warm and an allocation
  that may wait does wait, to the end. A valid `wait_ms` above 1000 is lowered to 1000 so the
  run spends its time on requests; values over the limit (60000) are left alone, since the
  server must refuse them.
"""

import os

import schemathesis

KEEP_POOL = os.environ.get("FUZZ_KEEP_POOL", "")
KEEP_KEYS = {k for k in os.environ.get("FUZZ_KEEP_KEYS", "").split(",") if k}
MAX_WAIT_MS = 60_000


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    method = case.operation.method.upper()
    path = case.operation.path
    params = case.path_parameters or {}
    if path == "/v1/pools/{name}" and method in ("PUT", "DELETE") and params.get("name") == KEEP_POOL:
        params["name"] = "fuzz-guarded"
        if isinstance(case.body, dict) and case.body.get("name") == KEEP_POOL:
            case.body["name"] = "fuzz-guarded"
    if path == "/v1/keys/{id}" and method == "DELETE" and params.get("id") in KEEP_KEYS:
        params["id"] = "000000000000"
    if path == "/v1/allocations" and method == "POST" and isinstance(case.body, dict):
        wait = case.body.get("wait_ms")
        if isinstance(wait, int) and not isinstance(wait, bool) and 1000 < wait <= MAX_WAIT_MS:
            case.body["wait_ms"] = 1000
