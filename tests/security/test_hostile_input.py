"""Hostile input: oversized and malformed payloads on the serving APIs (REST and gRPC) are refused with the right
status without buffering past the limit, audited (coalesced, so a flood is not a flood of audit writes), and the
server keeps serving; user-supplied names cannot traverse paths, and a model name in a URL (quotes, backslashes,
`%`, `_`, a filter's own grammar) gets a 400 or 404 from the serving APIs and the platform's API, never a 500;
credentials never reach the server's log."""
import json
import socket
import urllib.parse

import grpc
import httpx
import numpy as np
import pandas as pd
import pytest

from helpers import BIN, free_port, onnx_chain, start_process, stop_process, wait_http
from mlplat.errors import NotFoundError, ValidationError


@pytest.fixture
def served(ws, server, tmp_path):
    model = onnx_chain(tmp_path / "relu.onnx")
    grpc_port = free_port()
    rest = server(f"relu={model}", f"--grpc-port={grpc_port}", refresh="0", auth="required")
    token = ws.tokens.create("scorer", ["inference-client"])["token"]
    return rest, f"127.0.0.1:{grpc_port}", token, tmp_path


def infer_body(data="[1, 2, 3, 4]"):
    return '{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ' + data + "}]}"


@pytest.mark.services
def test_rest_refuses_oversized_and_malformed_bodies(ws, served):
    rest, _, token, tmp_path = served
    url = f"http://{rest}/v2/models/relu/infer"
    auth = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    host, port = rest.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:   # a declared size past the limit: refused
        sock.sendall(f"POST /v2/models/relu/infer HTTP/1.1\r\nhost: {rest}\r\nauthorization: Bearer {token}\r\n"
                     f"content-type: application/json\r\ncontent-length: {70 * 2**20}\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")                      # before a byte of the body was sent

    def stream(total, chunk=2**20):          # chunked: no content-length, the server must stop reading at its limit
        sent = 0
        while sent < total:
            yield b" " * chunk; sent += chunk
    r = httpx.post(url, content=stream(300 * 2**20), headers=auth, timeout=60)
    assert r.status_code == 413 and "over 64 MB" in r.json()["error"]
    for depth, expected in ((100_000, "depth"), (1, "not valid JSON")):   # (orjson words its depth limit by version)
        body = infer_body("[" * depth + "1" + "]" * depth) if depth > 1 else '{"inputs": [{"name": '
        r = httpx.post(url, content=body, headers=auth)
        assert r.status_code == 400 and expected in r.json()["error"], r.text
    r = httpx.post(url, content=infer_body().replace("[1, 4]", "[100000000, 100000000]"), headers=auth)
    assert r.status_code == 400 and "the model expects [-1, 4]" in r.json()["error"]     # no giant allocation
    for _ in range(20):
        assert httpx.post(url, content="{" * 50, headers=auth).status_code == 400
    r = httpx.post(url, content=infer_body(), headers=auth)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [1, 2, 3, 4]     # still serving
    rejects = [r for r in ws.audit.records(limit=None) if r["action"] == "serving.reject"]
    assert rejects and all(r["outcome"] == "denied" and r["details"]["surface"] == "rest" for r in rejects)
    assert len(rejects) <= 3 < 23                                                       # 23 refusals, coalesced
    assert "over 64 MB" in rejects[-1]["details"]["reason"] and rejects[-1]["details"]["client"].startswith("127.0.0.1:")


@pytest.mark.services
def test_grpc_refuses_malformed_and_oversized_messages(ws, served):
    import tritonclient.grpc as tg
    _, target, token, tmp_path = served
    meta = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 128 * 2**20)]) as ch:
        raw = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=lambda b: b,
                             response_deserializer=lambda b: b)
        for garbage in (b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f" + b"x" * 10, b"\x0a" + b"\x80" * 9 + b"\x01"):
            with pytest.raises(grpc.RpcError) as e:
                raw(garbage, metadata=meta, timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid inference.ModelInferRequest" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            raw(b"\xff\xff", timeout=10)                                    # no credential: refused before anything else
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            raw(b"\x0a\x05relu2" + b"\x00" * (70 * 2**20), metadata=meta, timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    client = tg.InferenceServerClient(target)
    i = tg.InferInput("input", [1, 4], "FP32"); i.set_data_from_numpy(np.array([[1, -2, 3, -4]], np.float32))
    out = client.infer("relu", [i], headers={"authorization": f"Bearer {token}"}).as_numpy("output")
    np.testing.assert_allclose(out, [[1, 0, 3, 0]])                                  # still serving
    rejects = [r for r in ws.audit.records(limit=None) if r["action"] == "serving.reject" and r["details"]["surface"] == "grpc"]
    assert len(rejects) == 1 and "protobuf" in rejects[0]["details"]["reason"]      # three refusals, one record so far


@pytest.mark.services
def test_credentials_never_reach_the_servers_log(ws, served):
    rest, _, token, tmp_path = served
    url = f"http://{rest}/v2/models/relu/infer"
    for t in (token, token[:-1] + "A", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0." + "s" * 40):
        httpx.post(url, content=infer_body(), headers={"authorization": f"Bearer {t}"})
    logs = "".join(p.read_text() for p in tmp_path.glob("serve-*.log"))
    records = json.dumps(ws.audit.records(limit=None), default=str)
    secret = token.split("_", 2)[2]   # the secret itself may hold "_"
    assert secret not in logs and secret not in records and secret[:-1] not in records and "s" * 40 not in records


def test_names_cannot_traverse_paths(ws):
    df = pd.DataFrame({"id": [1, 2], "ts": pd.to_datetime(["2026-01-01", "2026-01-02"], utc=True)})
    for bad in ("../escape", "a/../../b", "/etc/passwd", "..", "x\x00y"):
        with pytest.raises(ValidationError):
            ws.features.register_source(bad, df, classification="internal", timestamp_field="ts")
        with pytest.raises((ValidationError, NotFoundError)):
            ws.models.get(bad, 1)
    from mlplat.templates import copy
    with pytest.raises((ValidationError, NotFoundError)):
        copy("../../etc", ws.config.home)
    assert not list((ws.config.home / "data").rglob("*escape*")) and not (ws.config.home.parent / "escape").exists()


# names as they come in URLs: MLflow's filter grammar (quotes, OR, LIKE wildcards), escapes, paths, bytes, length
HOSTILE = ["it's", 'say "hi"', """both '" quotes""", "x' OR name = 'y", "%", "_", "a%_b", "a\\b", "..", "../x", "a b",
           "\x00", "é€", "a;DROP TABLE registered_models--", "*", "x" * 1000]


@pytest.mark.services
def test_hostile_model_names_get_400_or_404_from_serving_never_500(ws, served):
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException
    rest, target, token, _ = served
    auth = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=f"http://{rest}", headers=auth) as c:
        for name in [n for n in HOSTILE if n != ".."]:       # (a client resolves a ".." segment before sending)
            q = urllib.parse.quote(name, safe="")
            for method, path in (("POST", f"/v2/models/{q}/infer"), ("POST", f"/v2/models/relu/versions/{q}/infer"),
                                 ("GET", f"/v2/models/{q}"), ("GET", f"/v2/models/{q}/ready"),
                                 ("GET", f"/v2/models/relu/versions/{q}"), ("GET", f"/mlplat/rollouts/{q}")):
                r = c.request(method, path, content=infer_body())
                assert r.status_code in (400, 404), (name, method, path, r.status_code, r.text)
                if "/" not in name:   # a decoded "/" leaves the model routes: Starlette's plain 404
                    assert "error" in r.json(), (name, path, r.text)
    client = tg.InferenceServerClient(target)
    i = tg.InferInput("input", [1, 4], "FP32"); i.set_data_from_numpy(np.ones((1, 4), np.float32))
    for name in HOSTILE:
        for call in (lambda: client.infer(name, [i], headers=auth), lambda: client.get_model_metadata(name, headers=auth),
                     lambda: client.infer("relu", [i], model_version=name, headers=auth)):
            with pytest.raises(InferenceServerException) as e:
                call()
            assert e.value.status() in ("StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT"), (name, e.value.status(), e.value)
    assert client.infer("relu", [i], headers=auth).as_numpy("output").tolist() == [[1, 1, 1, 1]]     # still serving


@pytest.mark.services
def test_hostile_model_names_get_404_from_the_platforms_api_never_500(ws, tmp_path):
    client = ws.mlflow_client()              # MLflow takes any name but '/' and ':': one holding quotes can exist
    for name in ("it's", """both '"\\"""):
        client.create_registered_model(name); client.create_model_version(name, str(tmp_path))
    token = ws.tokens.create("reader", ["viewer"])["token"]
    port, log = free_port(), tmp_path / "service.log"
    proc = start_process([BIN / "mlplat", "server", "--port", port], log)
    base = f"http://127.0.0.1:{port}/mlplat/api"
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready", proc, log)
        with httpx.Client(base_url=base, headers={"authorization": f"Bearer {token}"}, timeout=60) as c:
            for name in [n for n in HOSTILE if n not in ("..", "it's")]:
                q = urllib.parse.quote(name, safe="")
                for path in (f"/models/{q}/versions", f"/models/{q}/history", f"/models/{q}/versions/1/check"):
                    r = c.get(path)
                    ok = (200, 404) if path.endswith("/history") else (400, 403, 404)   # no history yet: an empty one
                    assert r.status_code in ok and (r.status_code == 200 or r.json()["error"] != "InternalError"), (name, path, r.text)
            for name in ("it's", """both '"\\"""):         # found, and nothing but itself
                r = c.get(f"/models/{urllib.parse.quote(name, safe='')}/versions")
                assert r.status_code == 200 and [(v["name"], v["version"]) for v in r.json()] == [(name, 1)], r.text
    finally:
        stop_process(proc)
    assert "Traceback" not in log.read_text()
