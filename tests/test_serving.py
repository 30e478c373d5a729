"""`mlplat serve` as a real server on 127.0.0.1: unmodified tritonclient (http) against it, hot swap of an alias under
load with zero failed requests, a cache cut short by an interrupted download healed (fetched again, not refused), a
broken version never replacing a working one, concurrent loads of one version sharing one verified copy, and fuzzed
bad input never a 5xx."""
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import X, register_version, wait_for

pytestmark = pytest.mark.services   # every test runs `mlplat serve`


def test_tritonclient_http_matches_in_process_ort(ws, server):
    import onnxruntime as ort
    import tritonclient.http as httpclient
    v = register_version(ws, 1.0)
    ws.models.promote("risk", v.version, "champion")
    url = server("risk=models:/risk@champion")
    client = httpclient.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("risk")
    meta = client.get_model_metadata("risk")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}] and meta["versions"] == ["1"]
    local = ort.InferenceSession(ws.crypto.open_bytes(next((ws.config.home / "serving-cache" / "risk" / "1").rglob("*.onnx"))))  # sealed at rest
    expected = dict(zip(["label", "probabilities"], local.run(None, {"input": X[:17]})))
    for binary in (True, False):
        inp = httpclient.InferInput("input", [17, 4], "FP32")
        inp.set_data_from_numpy(X[:17], binary_data=binary)
        outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
        res = client.infer("risk", [inp], outputs=outs, request_id="req-7")
        assert res.get_response()["id"] == "req-7" and res.get_response()["model_version"] == "1"
        np.testing.assert_array_equal(res.as_numpy("label"), expected["label"])
        np.testing.assert_array_equal(res.as_numpy("probabilities"), expected["probabilities"])
    import httpx
    metrics = httpx.get(f"http://{url}/metrics").text
    assert 'mlplat_requests_total{model="risk",protocol="rest",variant="default",version="1"} 2.0' in metrics
    time.sleep(1)
    from mlplat.serving.prediction_log import read_predictions
    logged = read_predictions(ws.config.home, "risk", keys=ws.crypto)           # sealed at rest: read with the keys
    assert len(logged) == 2 and logged[0]["request_id"] == "req-7" and len(logged[0]["inputs"]["input"]) == 17


def test_alias_move_swaps_under_load_without_failures(ws, server):
    import httpx
    v1, v2 = register_version(ws, 1.0), register_version(ws, 0.001)
    ws.models.promote("risk", v1.version, "champion")
    url = f"http://{server('risk=models:/risk@champion')}/v2/models/risk/infer"
    body = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": X[:2].ravel().tolist()}]}
    seen, failures, stop = [], [], threading.Event()

    def load():
        with httpx.Client() as c:
            while not stop.is_set():
                r = c.post(url, json=body)
                if r.status_code != 200:
                    failures.append((r.status_code, r.text))
                else:
                    seen.append((threading.get_ident(), r.json()["model_version"]))
    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    ws.models.promote("risk", v2.version, "champion", reason="hot swap test")
    deadline = time.time() + 30
    while time.time() < deadline and not any(v == str(v2.version) for _, v in seen[-20:]):
        time.sleep(0.2)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join()
    assert failures == [] and len(seen) > 50
    for v in (v1, v2):  # lineage: model version -> deployment, for the first version and the swapped-in one
        assert "deployment:risk" in ws.lineage.of(f"model:risk/{v.version}")["downstream_nodes"]
    for tid in {t for t, _ in seen}:  # per client: once a response came from v2, every later one did
        versions = [v for t, v in seen if t == tid]
        first_new = versions.index(str(v2.version))
        assert set(versions[first_new:]) == {str(v2.version)} and set(versions[:first_new]) <= {str(v1.version)}


def stored_file(ws, version: int) -> Path:
    "The `model.onnx` of a registered version of 'risk' in the artifact store (a local folder in the test workspace)."
    uri = ws.mlflow_client().get_model_version_download_uri("risk", str(version))
    return next(Path(uri.removeprefix("file://")).rglob("model.onnx"))


def denied(ws) -> list[dict]:
    return [r for r in ws.audit.records(limit=None) if r["outcome"] == "denied"]


def test_a_cut_short_cache_heals_and_a_broken_version_never_replaces_a_working_one(ws, server):
    import httpx
    v1, v2 = register_version(ws, 1.0), register_version(ws, 0.5)
    ws.models.promote("risk", v1.version, "champion")
    base = f"http://{server('risk=models:/risk@champion')}/v2/models/risk"
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}
    served = lambda: httpx.post(base + "/infer", json=body).json()["model_version"]
    # what an interrupted download left in the cache before downloads were atomic: half of the file, and a temp folder
    stored = stored_file(ws, v2.version).read_bytes()
    cached = ws.config.home / "serving-cache" / "risk" / str(v2.version) / "model.onnx"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(stored[:len(stored) // 2])
    stale = cached.parent / ".model.onnx.x1y2.partial"
    stale.mkdir(); (stale / "model.onnx").write_bytes(stored[:10])
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    ws.models.promote("risk", v2.version, "champion")
    wait_for(lambda: served() == str(v2.version), 30, "version 2 served from a healed cache")
    assert cached.read_bytes() == stored and not stale.exists() and denied(ws) == []   # fetched again, nothing judged
    assert sorted(p.name for p in cached.parent.iterdir()) == ["model.onnx"]

    # the registry's own copy of version 1 is damaged (and so is the cache): refused, audited, version 2 keeps serving
    for f in (stored_file(ws, v1.version), cached.parent.parent / str(v1.version) / "model.onnx"):
        data = bytearray(f.read_bytes()); data[len(data) // 2] ^= 0x40; f.write_bytes(bytes(data))
    ws.models.promote("risk", v1.version, "champion")
    last_error = lambda: httpx.get(base).json().get("parameters", {}).get("last_load_error", "")
    wait_for(lambda: "it was not loaded" in last_error(), 30, "the refused load")
    assert "failed authentication" in last_error() and served() == str(v2.version)
    assert [r["action"] for r in denied(ws)] and all(r["action"] == "crypto.open" for r in denied(ws))


def test_concurrent_loads_of_a_version_share_one_verified_copy(ws, tmp_path):
    import subprocess
    import sys
    v = register_version(ws, 1.0)
    script = ("import sys, mlplat; from mlplat.serving.models import read_model\n"
              "print(len(read_model(mlplat.connect(sys.argv[1]), sys.argv[2])[2]))")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(ws.config.home), f"models:/risk/{v.version}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1 and denied(ws) == []
    folder = ws.config.home / "serving-cache" / "risk" / str(v.version)
    assert [p.name for p in folder.iterdir()] == ["model.onnx"]                      # no temp folder left behind


def test_fuzzed_bad_requests_never_get_a_5xx(ws, server, tmp_path):
    import httpx
    from hypothesis import HealthCheck, given, settings, strategies as st
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "relu",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 3])])
    (tmp_path / "relu.onnx").write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    model = tmp_path / "relu.onnx"
    url = f"http://{server(f'relu={model}', refresh='0')}/v2/models/relu/infer"
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=5))
    values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=6), st.dictionaries(st.text(max_size=6), c, max_size=4)),
                          max_leaves=20)
    tensor = st.fixed_dictionaries({"name": st.sampled_from(["input", "x", ""]), "shape": values | st.lists(st.integers(-2, 5), max_size=3),
                                    "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "FP64", "nope"]), "data": values},
                                   optional={"parameters": st.dictionaries(st.sampled_from(["binary_data_size", "x"]), values, max_size=2)})
    bodies = st.one_of(st.binary(max_size=64), values.map(lambda v: json.dumps(v).encode()),
                       st.fixed_dictionaries({"inputs": st.lists(tensor, max_size=3)},
                                             optional={"outputs": values, "parameters": values, "id": values}).map(
                           lambda d: json.dumps(d).encode()))
    headers = st.one_of(st.just({}), st.builds(lambda n: {"Inference-Header-Content-Length": str(n)}, st.integers(-5, 200)))
    client = httpx.Client()

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(bodies, headers)
    def never_5xx(body, hdrs):
        r = client.post(url, content=body, headers=hdrs)
        assert r.status_code < 500, (body, hdrs, r.status_code, r.text)
        if r.status_code != 200:
            assert "error" in r.json()
    never_5xx()
    ok = client.post(url, json={"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [-1, 0, 2]}]})
    assert ok.json()["outputs"][0]["data"] == [0.0, 0.0, 2.0]
