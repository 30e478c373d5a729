"""`mlplat serve` denies by default: every REST route and gRPC method but the health checks needs a bearer credential
allowed the route's permission. Unmodified tritonclient (http and grpc) works with a token in `headers=`."""
import json

import httpx
import numpy as np
import pytest

from helpers import free_port, onnx_chain

pytestmark = pytest.mark.services   # every test runs `mlplat serve`


@pytest.fixture
def served(ws, server, tmp_path):
    "A model served with the default auth, REST and gRPC; tokens for an inference client and a viewer."
    model = onnx_chain(tmp_path / "relu.onnx")
    grpc_port = free_port()
    rest = server(f"relu={model}", f"--grpc-port={grpc_port}", refresh="0", auth="required")
    client = ws.tokens.create("churn-app", ["inference-client"])["token"]
    viewer = ws.tokens.create("dashboard", ["viewer"])["token"]
    return rest, f"127.0.0.1:{grpc_port}", client, viewer


def test_rest_needs_a_token_allowed_the_route(ws, served):
    rest, _, client, viewer = served
    base = f"http://{rest}"
    x = np.arange(8, dtype=np.float32).reshape(2, 4) - 3
    body = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
    bearer = lambda t: {"authorization": f"Bearer {t}"}
    assert httpx.get(f"{base}/v2/health/live").status_code == 200 and httpx.get(f"{base}/v2/health/ready").status_code == 200
    for path in ("/v2", "/v2/models/relu", "/v2/models/relu/ready", "/metrics"):
        r = httpx.get(base + path)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), (path, r.status_code)
    r = httpx.post(f"{base}/v2/models/relu/infer", json=body)
    assert r.status_code == 401 and "error" in r.json()
    r = httpx.post(f"{base}/v2/models/relu/infer", json=body, headers=bearer("mlp_000000000000_" + "A" * 43))
    assert r.status_code == 401 and "not valid" in r.json()["error"]
    r = httpx.post(f"{base}/v2/models/relu/infer", json=body, headers=bearer(viewer))
    assert r.status_code == 403 and "may not serving:predict" in r.json()["error"]
    assert httpx.get(f"{base}/v2/models/relu", headers=bearer(viewer)).status_code == 200     # a viewer reads metadata
    r = httpx.post(f"{base}/v2/models/relu/infer", json=body, headers=bearer(client))
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"]).reshape(2, 4), np.maximum(x, 0))

    import tritonclient.http as th
    tc = th.InferenceServerClient(rest)
    i = th.InferInput("input", [2, 4], "FP32"); i.set_data_from_numpy(x)
    np.testing.assert_allclose(tc.infer("relu", [i], headers=bearer(client)).as_numpy("output"), np.maximum(x, 0))
    with pytest.raises(Exception, match="401|bearer|not valid|requires"):
        tc.infer("relu", [i])
    denied = [(r["principal"], r["action"]) for r in ws.audit.records(limit=None) if r["outcome"] == "denied"]
    assert ("sa:dashboard", "serving.predict") in denied
    logins = [r["details"] for r in ws.audit.records(limit=None) if r["action"] == "auth.login"]   # coalesced per reason
    assert {(d["refusal"], d["source"]) for d in logins} == {("missing", "127.0.0.1"), ("invalid", "127.0.0.1")}, logins
    assert not [r for r in ws.audit.records(limit=None) if client.split("_", 2)[2] in json.dumps(r, default=str)]


def test_grpc_needs_a_token_in_the_metadata(served):
    import grpc
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException
    _, target, client, viewer = served
    tc = tg.InferenceServerClient(target)
    assert tc.is_server_live() and tc.is_server_ready()                  # the health checks are open
    x = np.ones((1, 4), np.float32)
    i = tg.InferInput("input", [1, 4], "FP32"); i.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as e:
        tc.infer("relu", [i])
    assert "UNAUTHENTICATED" in str(e.value.status())
    with pytest.raises(InferenceServerException) as e:
        tc.infer("relu", [i], headers={"authorization": f"Bearer {viewer}"})
    assert "PERMISSION_DENIED" in str(e.value.status()) and "may not serving:predict" in e.value.message()
    out = tc.infer("relu", [i], headers={"authorization": f"Bearer {client}"}).as_numpy("output")
    np.testing.assert_allclose(out, x)
    assert tc.get_model_metadata("relu", headers={"authorization": f"Bearer {viewer}"}).name == "relu"
    with pytest.raises(InferenceServerException):
        tc.get_model_metadata("relu")
