"""`mlplat demo` — the main job of `make demo` — end to end on a fresh embedded workspace, twice; then the registry
CLI on the model the demo trained: ONNX faithful to PyTorch, gates that block with a readable report, alias history."""
import json
from pathlib import Path

import numpy as np

from conftest import run_cli


def test_demo_runs_and_is_idempotent(tmp_path, home, monkeypatch):
    demo_home = tmp_path / "demo"
    rep = json.loads(run_cli("demo", "--home", demo_home, "--customers", "400", "--days", "60", "--json", check=0).stdout)
    assert [d["id"] for d in rep["datasets"]] == ["customers@1", "transactions@1"]
    assert rep["training_set"]["rows"] == rep["data"]["labels"] == 400 * 2
    assert rep["training_set"]["rows_without_recent_activity"] > 0
    assert rep["online"]["values"]["age"] is not None and rep["online"]["values"]["spend_7d"] is not None
    assert rep["push"]["spend_7d_after"] == round(rep["push"]["spend_7d_before"] + 250.0, 2)
    assert "may not be stored or processed in region 'eu-west-1'" in rep["residency_refusal"]
    assert rep["job"]["state"] == "succeeded" and rep["job"]["metrics"]["test_auc"] > 0.6 and not rep["job"]["reused"]
    assert rep["job"]["training_set"] == "churn@1" and rep["job"]["spec"]["deepspeed"]["zero_stage"] == 2
    assert rep["registry"]["champion"] == 1 and rep["registry"]["gates"] == {"parity": True, "latency": True}
    assert rep["registry"]["parity_max_abs"] < 1e-4 and rep["challenger"]["version"] == 2
    sv = rep["serving"]
    assert sv["requests"] == 300 and set(sv["variants"]) == {"champion", "challenger"} and sum(sv["variants"].values()) == 300
    assert 0.1 < sv["variants"]["challenger"] / 300 < 0.35
    assert rep["audit"]["ok"]
    assert (demo_home / "feast" / "registry.db").exists() and (demo_home / "demo" / "churn_features.yaml").exists()

    text = run_cli("demo", "--home", demo_home, "--customers", "400", "--days", "60", check=0).stdout
    assert "customers@1 (400 rows" in text and "churn@1" in text and "chain intact" in text
    assert "REFUSED, nothing written, audited" in text and "Where to look" in text
    assert "reused (same data, same spec, already trained)" in text and "test AUC" in text
    assert "churn v1" in text and "alias champion" in text and "0 failed" in text

    # the registry CLI on what the demo registered
    monkeypatch.setenv("MLPLAT_HOME", str(demo_home))
    import mlplat
    ws = mlplat.connect(demo_home)
    v1 = json.loads(run_cli("models", "show", "churn", "--json", check=0).stdout)[0]
    assert v1["version"] == 1 and v1["aliases"] == ["champion"] and v1["framework"] == "pytorch"
    assert v1["signature"]["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 1]}]
    assert v1["tags"]["mlplat.training_set"] == "churn@1" and v1["tags"]["mlplat.job_id"] == rep["job"]["id"]
    assert json.loads(v1["tags"]["mlplat.feature_views"]) == {"customer_activity": 1, "customer_profile": 1}
    import mlflow
    import onnxruntime as ort
    import torch
    mlflow.set_tracking_uri(ws.config.tracking_uri)
    onnx_file = next(Path(mlflow.artifacts.download_artifacts(ws.models.get("churn", 1).source)).rglob("*.onnx"))
    x = np.random.default_rng(0).normal(size=(7, v1["signature"]["inputs"][0]["shape"][1])).astype(np.float32)
    with torch.no_grad():
        expected = mlflow.pytorch.load_model(f"runs:/{v1['run_id']}/model", map_location="cpu")(torch.from_numpy(x)).numpy()
    assert np.abs(ort.InferenceSession(str(onnx_file)).run(None, {"input": x})[0] - expected).max() < 1e-4

    refused = run_cli("models", "promote", "churn", "2", "--alias", "champion", "--region", "eu-west-1", check=3)
    assert "FAIL  residency" in refused.stderr and "PASS  parity" in refused.stderr and "Traceback" not in refused.stderr
    ok = json.loads(run_cli("models", "promote", "churn", "2", "--alias", "champion", "--reason", "wider", "--json", check=0).stdout)
    assert "champion" in ok["aliases"]
    back = json.loads(run_cli("models", "rollback", "churn", "--alias", "champion", "--reason", "oops", "--json", check=0).stdout)
    assert back["version"] == 1
    hist = json.loads(run_cli("models", "history", "churn", "--alias", "champion", "--json", check=0).stdout)
    assert [(h["action"], h["from_version"], h["to_version"]) for h in hist] == [("promote", None, 1), ("promote", 1, 2), ("rollback", 2, 1)]
    assert "no earlier holder" in run_cli("models", "rollback", "churn", "--alias", "champion", check=1).stderr
    assert "model:churn/1" in ws.lineage.of(f"mlflow_run:{v1['run_id']}")["downstream_nodes"]
