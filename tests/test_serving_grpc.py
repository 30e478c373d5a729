"""gRPC (inference.GRPCInferenceService) with an unmodified tritonclient.grpc, run from its own virtualenv: tritonclient's
stubs need protobuf<7 and register inference.* symbols, so it must not share a process (or an environment) with the server."""
import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, X, free_port, register_version

pytestmark = pytest.mark.services   # `mlplat serve` with gRPC

CLIENT_VENV = REPO / ".cache" / "grpc-client-venv"
CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException
url, x_path = sys.argv[1], sys.argv[2]
c = grpcclient.InferenceServerClient(url)
meta = c.get_model_metadata("risk", as_json=True)
out = {"live": c.is_server_live(), "ready": c.is_server_ready(), "model_ready": c.is_model_ready("risk"),
       "server": c.get_server_metadata(as_json=True), "meta": meta}
x = np.load(x_path)
inp = grpcclient.InferInput("input", list(x.shape), "FP32"); inp.set_data_from_numpy(x)
res = c.infer("risk", [inp], outputs=[grpcclient.InferRequestedOutput("label"), grpcclient.InferRequestedOutput("probabilities")],
              request_id="g-1")
out["label"] = res.as_numpy("label").tolist(); out["probabilities"] = res.as_numpy("probabilities").tolist()
out["response"] = res.get_response(as_json=True)
bad = grpcclient.InferInput("input", [2, 5], "FP32"); bad.set_data_from_numpy(np.zeros((2, 5), np.float32))
try: c.infer("risk", [bad]); out["bad"] = "accepted"
except InferenceServerException as e: out["bad"] = [e.status(), e.message()]
try: c.infer("nope", [inp]); out["missing"] = "accepted"
except InferenceServerException as e: out["missing"] = [e.status(), e.message()]
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def triton_grpc_python():
    "A virtualenv (cached under .cache/) holding only tritonclient[grpc] and its protobuf 6."
    py = CLIENT_VENV / "bin" / "python"
    if not (CLIENT_VENV / ".ready").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(CLIENT_VENV)], check=True)
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "tritonclient[grpc]==2.73.0", "numpy"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"could not install tritonclient[grpc] for the client venv:\n{r.stderr[-2000:]}")
        (CLIENT_VENV / ".ready").touch()
    return py


def test_tritonclient_grpc_matches_in_process_ort(ws, server, triton_grpc_python, tmp_path):
    import httpx
    import onnxruntime as ort
    v = register_version(ws, 1.0)
    ws.models.promote("risk", v.version, "champion")
    gport = free_port()
    url = server("risk=models:/risk@champion", f"--grpc-port={gport}", refresh="0")
    np.save(tmp_path / "x.npy", X[:9])
    r = subprocess.run([str(triton_grpc_python), "-c", CLIENT, f"127.0.0.1:{gport}", str(tmp_path / "x.npy")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    local = ort.InferenceSession(ws.crypto.open_bytes(next((ws.config.home / "serving-cache" / "risk" / "1").rglob("*.onnx"))))  # sealed at rest
    label, proba = local.run(None, {"input": X[:9]})
    assert out["live"] and out["ready"] and out["model_ready"] and out["server"]["name"] == "mlplat"
    assert out["meta"]["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert out["label"] == label.tolist() and np.array_equal(np.array(out["probabilities"], np.float32), proba)
    assert out["response"]["id"] == "g-1" and out["response"]["model_version"] == "1"
    assert out["bad"][0] == "StatusCode.INVALID_ARGUMENT" and "expects [-1, 4]" in out["bad"][1]
    assert out["missing"][0] == "StatusCode.NOT_FOUND"
    metrics = httpx.get(f"http://{url}/metrics").text
    assert 'mlplat_requests_total{model="risk",protocol="grpc",variant="default",version="1"} 1.0' in metrics
