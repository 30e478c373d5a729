"""The model registry on a real DeepSpeed-trained PyTorch model: ONNX export with a signature, parity and latency
gates, promotion through the CLI, residency and metric gates that block with a readable report, alias history."""
import json
from pathlib import Path

import numpy as np

from conftest import TEMPLATE, run_cli


def test_register_gate_promote_a_trained_model(churn_ws, churn_set):
    ws = churn_ws
    job = ws.jobs.submit({"name": "churn-mlp", "entrypoint": str(TEMPLATE), "args": ["--epochs", "3"],
                          "training_set": churn_set.id, "deepspeed": {"zero_stage": 2, "micro_batch_size": 32},
                          "resources": {"processes_per_node": 2}, "timeout": "10m"}, wait=True, timeout=400)
    assert job.state == "succeeded", "".join(ws.jobs.logs(job.id))

    out = run_cli("models", "register", job.mlflow_run_id, "--name", "churn", "--json", check=0).stdout
    v1 = json.loads(out)
    assert v1["version"] == 1 and v1["framework"] == "pytorch"
    sig = v1["signature"]
    assert sig["inputs"][0]["name"] == "input" and sig["inputs"][0]["datatype"] == "FP32" and sig["inputs"][0]["shape"][0] == -1
    assert sig["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 1]}]
    gates = {g["gate"]: g for g in v1["gates"]}
    assert gates["parity"]["passed"] and gates["parity"]["figures"]["rows"] > 50  # the held-out split the job logged
    assert gates["parity"]["figures"]["outputs"]["output"]["max_abs"] < 1e-4
    assert gates["latency"]["passed"] and gates["latency"]["figures"]["batch1"]["p50_ms"] > 0
    assert v1["tags"]["mlplat.training_set"] == churn_set.id and v1["tags"]["mlplat.job_id"] == job.id
    assert json.loads(v1["tags"]["mlplat.feature_views"]) == churn_set.lineage["feature_views"]

    # the registered ONNX file answers like the trained model
    import mlflow
    import onnxruntime as ort
    mlflow.set_tracking_uri(ws.config.tracking_uri)
    path = mlflow.artifacts.download_artifacts(ws.models.get("churn", 1).source)
    onnx_file = next(Path(path).rglob("*.onnx"))
    x = np.random.default_rng(0).normal(size=(7, sig["inputs"][0]["shape"][1])).astype(np.float32)
    torch_model = mlflow.pytorch.load_model(f"runs:/{job.mlflow_run_id}/model", map_location="cpu")
    import torch
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(onnx_file)).run(None, {"input": x})[0]
    assert np.abs(got - expected).max() < 1e-4

    # residency: personal data may not be served from eu-west-1 -> blocked with the report, audited, exit 3
    refused = run_cli("models", "promote", "churn", "1", "--alias", "champion", "--region", "eu-west-1", check=3)
    assert "FAIL  residency" in refused.stderr and "PASS  parity" in refused.stderr and "Traceback" not in refused.stderr
    assert ws.models.history("churn") == []
    # a metric threshold the run does not meet blocks too
    ws.config.models.metric_thresholds = {"test_auc": 0.999}
    try:
        ws.models.promote("churn", 1, "champion")
        raise AssertionError("a 0.999 AUC threshold should block")
    except Exception as e:
        assert type(e).__name__ == "GateFailed" and "FAIL  metrics" in str(e)
    ws.config.models.metric_thresholds = {"test_auc": 0.6}

    ok = run_cli("models", "promote", "churn", "1", "--alias", "champion", "--reason", "first model", "--json", check=0).stdout
    assert json.loads(ok)["aliases"] == ["champion"]
    hist = json.loads(run_cli("models", "history", "churn", "--json", check=0).stdout)
    assert [(h["alias"], h["from_version"], h["to_version"], h["reason"]) for h in hist] == [("champion", None, 1, "first model")]
    shown = run_cli("models", "show", "churn", check=0).stdout
    assert "PASS  parity" in shown and f"training_set={churn_set.id}" in shown
    assert "churn" in run_cli("models", "list", check=0).stdout
    assert f"model:churn/1" in ws.lineage.of(f"mlflow_run:{job.mlflow_run_id}")["downstream_nodes"]
    nothing = run_cli("models", "rollback", "churn", "--alias", "champion", check=1)
    assert "no earlier holder" in nothing.stderr
