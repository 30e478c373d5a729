"""`mlplat demo` — the main job of `make demo` — is the churn pipeline (templates/pipelines/churn) end to end on a fresh
embedded workspace: features -> two DeepSpeed trainings side by side -> evaluate + register (gates) -> promote ->
canary -> monitor, in real kernels; run twice, the second run reuses what is identical. Then the registry CLI on the
model it trained: ONNX faithful to PyTorch, gates that block with a readable report, alias history. It is the heaviest
test (four training processes at once), so `make test` runs it alone, after the parallel suite: in one CI run next to
it, the other worker's Ray cluster lost its job agent and then stopped answering."""
import json
import re
from datetime import datetime
from pathlib import Path

import numpy as np

from conftest import run_cli


def test_demo_runs_the_churn_pipeline_and_is_idempotent(tmp_path, home, monkeypatch):
    demo_home = tmp_path / "demo"
    text = run_cli("demo", "--home", demo_home, "--customers", "400", "--days", "60", "--epochs", "2", check=0).stdout
    assert "training set churn@1" in text and "chain intact" in text and "REFUSED, nothing written, audited" in text
    summary = "\n".join(line for line in text.splitlines() if re.match(r"\d\. ", line))
    assert "churn v1 -> champion, v2 -> challenger" in text and "0 failed" in text and "0 alert(s)" in text, summary
    assert "Where to look" in text and text.count("features             succeeded") == 1
    run_id = re.search(r"mlplat pipelines show (churn-[0-9a-f-]+)", text)[1]
    import mlplat
    ws = mlplat.connect(demo_home)
    run = ws.pipelines.get(run_id).to_dict()
    steps = {s["name"]: s for s in run["steps"]}
    assert run["status"] == "succeeded" and all(s["status"] == "succeeded" for s in steps.values()), steps
    assert list(steps) == ["features", "train_champion", "train_challenger", "register_champion", "register_challenger",
                           "promote_champion", "promote_challenger", "deploy", "monitor"]
    f = steps["features"]["outputs"]
    assert f["datasets"] == ["customers@1", "transactions@1"] and f["training_set"] == "churn@1" and f["rows"] == 400 * 2
    assert f["rows_without_recent_activity"] > 0
    for name in ("train_champion", "train_challenger"):
        assert steps[name]["outputs"]["test_auc"] > 0.6
    a0, a1 = (datetime.fromisoformat(steps["train_champion"][k]) for k in ("started_at", "finished_at"))
    b0, b1 = (datetime.fromisoformat(steps["train_challenger"][k]) for k in ("started_at", "finished_at"))
    assert a0 < b1 and b0 < a1                                  # the two trainings ran side by side
    assert steps["register_champion"]["outputs"] == {"version": 1, "gates": {"parity": True, "latency": True}}
    assert steps["register_challenger"]["outputs"]["version"] == 2
    variants = steps["deploy"]["outputs"]["variants"]
    assert set(variants) == {"champion", "challenger"} and sum(variants.values()) == 300 and 0.1 < variants["challenger"] / 300 < 0.35
    mon = steps["monitor"]["outputs"]
    assert mon["predictions"] == 300 and mon["versions"]["1"]["judged"] and mon["versions"]["1"]["drifted"] == []
    assert mon["alerts"] == []                                  # traffic from the training distribution raises nothing
    online = re.search(r"online lookup   customer \d+: (.*)  \[", text)[1]
    assert "age=" in online and "spend_7d=" in online and "=None" not in online
    assert (demo_home / "feast" / "registry.db").exists() and Path(run["folder"], "monitor.ipynb").is_file()

    # the same pipeline through `mlplat pipelines run`, on the demo's workspace: everything identical is reused
    from conftest import REPO
    r = run_cli("--home", demo_home, "pipelines", "run", REPO / "templates/pipelines/churn/pipeline.yaml", "-p", "customers=400",
                "-p", "days=60", "-p", "epochs=2", "-p", "challenger_epochs=1", "-p", "fail_on_alert=true", "--json", check=0)
    again = {s["name"]: s["outputs"] for s in json.loads(r.stdout)["steps"]}
    assert again["train_champion"]["job_id"] == steps["train_champion"]["outputs"]["job_id"]
    assert again["features"]["training_set"] == "churn@1" and again["register_challenger"]["version"] == 2
    assert again["monitor"]["alerts"] == []

    # the registry CLI on what the demo registered
    monkeypatch.setenv("MLPLAT_HOME", str(demo_home))
    import mlplat
    ws = mlplat.connect(demo_home)
    v1 = json.loads(run_cli("models", "show", "churn", "--json", check=0).stdout)[0]
    assert v1["version"] == 1 and v1["aliases"] == ["champion"] and v1["framework"] == "pytorch"
    assert v1["signature"]["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 1]}]
    assert v1["tags"]["mlplat.training_set"] == "churn@1" and v1["tags"]["mlplat.job_id"] == steps["train_champion"]["outputs"]["job_id"]
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
