"""Refusals are cheap and revocation is prompt on `mlplat serve`: a flood of requests without credentials or with bad
ones is answered 401 (never 5xx) and audited as O(1) records per client address, reason and
`serving.refusal_audit_seconds` (counted, written off the request path, the rest at shutdown); past
`serving.refusal_rate_per_second` an address is answered 429 with Retry-After (gRPC RESOURCE_EXHAUSTED); a revoked token,
a binding withdrawn through `ws.policy` and one removed from mlplat.toml are refused by the running server within 5 s."""
import asyncio
import time

import grpc
import httpx
import pytest

from helpers import BIN, free_port, onnx_chain, start_process, stop_process, wait_for, wait_http

pytestmark = pytest.mark.services   # every test runs `mlplat serve`
METADATA = "/inference.GRPCInferenceService/ServerMetadata"
BAD_TOKEN = "mlp_000000000000_" + "A" * 43


def serve(tmp_path, processes, env=None):
    "`mlplat serve` (auth required) of a Relu model on REST and gRPC: (process, REST url, gRPC target)."
    model = onnx_chain(tmp_path / "relu.onnx")
    port, grpc_port = free_port(), free_port()
    log = tmp_path / f"serve-{port}.log"
    proc = start_process([BIN / "mlplat", "serve", "--port", port, "--grpc-port", grpc_port, "--refresh", "0",
                          "--auth", "required", "--model", f"relu={model}"], log, env=env)
    processes.append(proc)
    wait_http(f"http://127.0.0.1:{port}/v2/health/ready", proc, log)
    return proc, f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"


def flood(url, n, headers, concurrency=16):
    "The statuses of `n` GET /v2 requests with `headers`, `concurrency` at a time."
    async def run():
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency)) as c:
            sem = asyncio.Semaphore(concurrency)
            async def one():
                async with sem: return (await c.get(url + "/v2", headers=headers)).status_code
            return await asyncio.gather(*[one() for _ in range(n)])
    return asyncio.run(run())


def grpc_call(target, token=None):
    "The status code of one ServerMetadata call (OK, or the refusal) and its trailing metadata."
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(METADATA, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            call(b"", metadata=(("authorization", f"Bearer {token}"),) if token else (), timeout=10)
            return grpc.StatusCode.OK, {}
        except grpc.RpcError as e:
            return e.code(), dict(e.trailing_metadata() or ())


def refusal_records(ws):
    return [r for r in ws.audit.records(limit=None) if r["outcome"] == "denied" and "refusal" in r["details"]]


def test_a_flood_of_refusals_is_audited_once_per_address_and_reason(ws, tmp_path, processes, monkeypatch):
    monkeypatch.setenv("MLPLAT_SERVING_REFUSAL_RATE_PER_SECOND", "0")      # no rate limit: every refusal is a 401
    monkeypatch.setenv("MLPLAT_SERVING_REFUSAL_AUDIT_SECONDS", "300")      # one window for the whole test
    reader = {"authorization": "Bearer " + ws.tokens.create("scraper", ["viewer"])["token"]}
    before = len(ws.audit.records(limit=None))
    proc, url, target = serve(tmp_path, processes)
    n = 400
    statuses = flood(url, n, {}) + flood(url, n, {"authorization": f"Bearer {BAD_TOKEN}"}) + \
        flood(url, n, {"authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"})   # a JWT, not accepted here
    assert set(statuses) == {401}, sorted(set(statuses))
    codes = [grpc_call(target)[0] for _ in range(50)] + [grpc_call(target, BAD_TOKEN)[0] for _ in range(50)]
    assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}

    kinds = {("rest", "missing"), ("rest", "invalid"), ("grpc", "missing"), ("grpc", "invalid")}
    wait_for(lambda: {(r["details"]["surface"], r["details"]["refusal"]) for r in refusal_records(ws)} == kinds, 10,
             "the first refusal of each kind, audited at once by the writer")
    running = refusal_records(ws)
    assert len(running) == 4 and all(r["principal"] == "anonymous" and r["action"] == "auth.login" for r in running)
    assert all(r["details"]["source"] == "127.0.0.1" for r in running)
    text = httpx.get(url + "/metrics", headers=reader).text
    assert f'mlplat_refusals_total{{reason="missing",surface="rest"}} {float(n)}' in text
    assert f'mlplat_refusals_total{{reason="invalid",surface="rest"}} {float(2 * n)}' in text
    assert 'mlplat_refusals_total{reason="invalid",surface="grpc"} 50.0' in text

    stop_process(proc)                                                   # the rest is written at shutdown
    records = refusal_records(ws)
    assert len(records) <= 2 * len(kinds), [r["details"] for r in records]   # 1,300 refusals, at most 8 records
    total = lambda surface, reason: sum(r["details"]["count"] for r in records
                                        if (r["details"]["surface"], r["details"]["refusal"]) == (surface, reason))
    assert (total("rest", "missing"), total("rest", "invalid"), total("grpc", "missing"), total("grpc", "invalid")) == (n, 2 * n, 50, 50)
    assert len(ws.audit.records(limit=None)) - before <= 2 * len(kinds) + 2   # + serving.start (and nothing per request)
    assert BAD_TOKEN[17:] not in str(records)                                 # never the credential


def test_past_the_rate_an_address_is_answered_429_with_retry_after(ws, tmp_path, processes, monkeypatch):
    monkeypatch.setenv("MLPLAT_SERVING_REFUSAL_RATE_PER_SECOND", "0.1")    # one refusal back every 10 s
    monkeypatch.setenv("MLPLAT_SERVING_REFUSAL_BURST", "20")
    client = {"authorization": "Bearer " + ws.tokens.create("churn-app", ["inference-client"])["token"]}
    proc, url, target = serve(tmp_path, processes)
    assert httpx.get(url + "/v2", headers=client).status_code == 200
    t0 = time.monotonic()
    statuses = flood(url, 60, {"authorization": f"Bearer {BAD_TOKEN}"})   # each 429 waits for the next allowance (<= 1 s)
    refilled = int((time.monotonic() - t0) * 0.1) + 1               # allowances that came back while the flood ran
    assert set(statuses) == {401, 429}, sorted(set(statuses))
    assert 20 <= statuses.count(401) <= 20 + refilled, statuses.count(401)   # the burst (and what came back), then 429s
    r = httpx.get(url + "/v2")
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 10, r.headers
    assert "too many refused requests" in r.json()["error"]
    code, trailers = grpc_call(target)                                   # the same address over gRPC
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and int(trailers["retry-after"]) >= 1
    assert httpx.get(url + "/v2", headers=client).status_code == 200    # an accepted credential is still served
    throttled = [r for r in refusal_records(ws) if r["details"]["refusal"] == "rate_limited"]
    assert throttled and throttled[0]["action"] == "serving.throttle"


def test_revoked_tokens_and_withdrawn_bindings_are_refused_within_5_s(ws, tmp_path, processes):
    from mlplat.governance.identity import Principal
    from mlplat.workspace import Workspace
    made = ws.tokens.create("churn-app", ["inference-client"])
    client, viewer = made["token"], ws.tokens.create("dash", ["viewer"])["token"]
    proc, url, target = serve(tmp_path, processes)
    infer = lambda token: httpx.post(url + "/v2/models/relu/infer", headers={"authorization": f"Bearer {token}"},
                                     json={"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).status_code
    assert infer(client) == 200 and grpc_call(target, client)[0] == grpc.StatusCode.OK
    ws.tokens.revoke(made["id"])
    wait_for(lambda: infer(client) == 401, 5, "the revoked token refused over REST")
    wait_for(lambda: grpc_call(target, client)[0] == grpc.StatusCode.UNAUTHENTICATED, 5, "the revoked token refused over gRPC")

    admin = Workspace(ws.config, Principal(ws.principal.name, (), {"amr": ["pwd", "mfa"]}))   # ws.policy needs MFA
    assert infer(viewer) == 403
    admin.policy.bind("sa:dash", ["inference-client"], "scores churn now")
    wait_for(lambda: infer(viewer) == 200, 5, "a binding granted through ws.policy in force")
    admin.policy.unbind("sa:dash", ["inference-client"], "no longer")
    wait_for(lambda: infer(viewer) == 403, 5, "a binding withdrawn through ws.policy refused over REST")
    assert grpc_call(target, viewer)[0] == grpc.StatusCode.OK           # a viewer still reads metadata

    toml = ws.config.source
    original = toml.read_text()
    toml.write_text(original.replace("[rbac.bindings]\n", '[rbac.bindings]\n"sa:dash" = ["inference-client"]\n', 1))
    wait_for(lambda: infer(viewer) == 200, 5, "a binding added to mlplat.toml in force")
    toml.write_text(original)
    wait_for(lambda: infer(viewer) == 403, 5, "a binding removed from mlplat.toml refused")
