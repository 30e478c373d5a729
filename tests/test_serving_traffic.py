"""A deployment served by `mlplat serve --config`: weighted canary split, sticky A/B assignment, shadow mirroring off the
response path, per-variant metrics and prediction log; and the same spec rendered as a KServe InferenceService that
validates against the real CRD."""
import json
import time

import httpx
import jsonschema
import pytest
import yaml

from helpers import REPO, X, crd_schema, onnx_chain, register_version, run_cli, undeclared_fields


@pytest.fixture
def two_versions(ws):
    v1, v2 = register_version(ws, 1.0), register_version(ws, 0.001)
    ws.models.promote("risk", v1.version, "champion")
    ws.models.promote("risk", v2.version, "challenger")
    return v1, v2


def body(i, customer=None, rid=None):
    doc = {"id": rid or f"r{i}", "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": X[i % 300].tolist()}]}
    if customer is not None:
        doc["parameters"] = {"customer_id": customer}
    return doc


@pytest.mark.services
def test_canary_ab_and_shadow(ws, two_versions, server, tmp_path):
    v1, v2 = two_versions
    spec = tmp_path / "risk.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "risk-live", "sticky_key": "customer_id", "shadow": f"models:/risk/{v2.version}",
        "variants": [{"name": "champion", "uri": "models:/risk@champion", "weight": 70},
                     {"name": "challenger", "uri": "models:/risk@challenger", "weight": 30}]}))
    assert run_cli("deployments", "check", spec, check=0).returncode == 0
    base = server(f"--config={spec}")
    url = f"http://{base}/v2/models/risk-live/infer"
    meta = httpx.get(f"http://{base}/v2/models/risk-live").json()
    assert sorted(meta["versions"]) == sorted([str(v1.version), str(v2.version)])
    with httpx.Client() as c:
        seen = [c.post(url, json=body(i)).json() for i in range(400)]          # no key: random by weight
        sticky = [c.post(url, json=body(i, "cust-17", f"s{i}")).json()["parameters"]["variant"] for i in range(25)]
        by_header = {c.post(url, json=body(i, rid=f"h{i}"), headers={"x-mlplat-key": "cust-99"}).json()["parameters"]["variant"]
                     for i in range(15)}
    variants = [r["parameters"]["variant"] for r in seen]
    share = variants.count("challenger") / len(variants)
    assert 0.22 < share < 0.38, share
    version_of = {"champion": str(v1.version), "challenger": str(v2.version)}
    assert all(r["model_version"] == version_of[r["parameters"]["variant"]] for r in seen)
    assert len(set(sticky)) == 1 and len(by_header) == 1  # the same key always lands on the same variant
    keys = {f"cust-{i}": None for i in range(200)}
    with httpx.Client() as c:
        for k in keys:
            keys[k] = c.post(url, json=body(0, k, f"k-{k}")).json()["parameters"]["variant"]
    assert 0.2 < list(keys.values()).count("challenger") / len(keys) < 0.4  # keys split by weight too

    time.sleep(2)  # shadow calls and the prediction log run off the response path
    metrics = httpx.get(f"http://{base}/metrics").text
    assert 'variant="challenger"' in metrics and 'variant="champion"' in metrics
    shadow_count = next(float(l.split()[-1]) for l in metrics.splitlines()
                        if l.startswith("mlplat_requests_total") and 'variant="shadow"' in l)
    assert shadow_count == 400 + 25 + 15 + 200
    assert "mlplat_shadow_max_abs_diff_count" in metrics
    from mlplat.serving.prediction_log import read_predictions
    lines = read_predictions(ws.config.home, "risk-live", keys=ws.crypto)
    shadows = {l["request_id"] for l in lines if l["variant"] == "shadow"}
    served = {l["request_id"] for l in lines if l["variant"] != "shadow"}
    assert "r5" in shadows and shadows <= served

    # outcomes arrive later; the challenger converts more often -> the A/B report says so
    import numpy as np
    rng = np.random.default_rng(0)
    rate = {"champion": 0.15, "challenger": 0.45}
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text("request_id,outcome\n" + "".join(
        f"{r['id']},{int(rng.random() < rate[r['parameters']['variant']])}\n" for r in seen))
    assert '"outcomes_logged": 400' in run_cli("ab", "outcomes", "risk-live", outcomes, "--json", check=0).stdout
    rep = json.loads(run_cli("ab", "report", "risk-live", "--json", check=0).stdout)
    assert rep["baseline"] == "champion" and rep["with_outcome"] == 400 and rep["requests"] == 400 + 25 + 15 + 200
    ch = next(v for v in rep["variants"] if v["variant"] == "challenger")
    assert ch["test"] == "two-proportion z-test" and ch["p_value"] < 0.001 and ch["ci"][0] > 0
    assert ch["verdict"].startswith("challenger is higher than champion")
    text = run_cli("ab", "report", "risk-live", check=0).stdout
    assert "two-proportion z-test" in text and "challenger is higher" in text
    bad = run_cli("ab", "outcomes", "risk-live", REPO / "README.md", check=1)
    assert "error:" in bad.stderr and "Traceback" not in bad.stderr


def test_deployment_renders_as_a_valid_kserve_inference_service(ws, two_versions, tmp_path, monkeypatch):
    spec = tmp_path / "risk.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "risk-live", "resources": {"cpu": "1", "memory": "2Gi"},
        "autoscaling": {"min_replicas": 1, "max_replicas": 6, "metric": "rps", "target": 200},
        "variants": [{"name": "champion", "uri": "models:/risk@champion", "weight": 90},
                     {"name": "challenger", "uri": "models:/risk@challenger", "weight": 10}]}))
    refused = run_cli("deployments", "render", spec, check=1)  # local artifact store, no workspace claim
    assert "kubernetes.home_claim" in refused.stderr and "Traceback" not in refused.stderr
    out = run_cli("deployments", "render", spec, env_extra={"MLPLAT_KUBERNETES_HOME_CLAIM": "ws-home"}, check=0).stdout
    isvc = yaml.safe_load(out)
    schema = crd_schema("serving.kserve.io_inferenceservices.yaml", "v1beta1")
    jsonschema.validate(isvc, schema)
    assert undeclared_fields(isvc, schema) == []
    p = isvc["spec"]["predictor"]
    assert p["canaryTrafficPercent"] == 10 and p["model"]["protocolVersion"] == "v2" and p["model"]["modelFormat"]["name"] == "onnx"
    assert p["model"]["storageUri"].startswith("pvc://ws-home/") and (p["minReplicas"], p["maxReplicas"], p["scaleMetric"]) == (1, 6, "rps")
    assert p["model"]["runtime"] == "mlplat-onnx"   # sealed at rest: served by mlplat's runtime, which holds the key
    runtime = yaml.safe_load((REPO / "templates" / "serving" / "mlplat-servingruntime.yaml").read_text())
    assert runtime["metadata"]["name"] == p["model"]["runtime"] and "{{.Name}}=/mnt/models/model.onnx" in runtime["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("case", ["healthy", "slow"])
@pytest.mark.services
def test_guarded_rollout_advances_or_rolls_back(ws, server, tmp_path, case):
    base_model = onnx_chain(tmp_path / "base.onnx")
    new_model = onnx_chain(tmp_path / "new.onnx", matmuls=150 if case == "slow" else 0)
    spec = tmp_path / "rollout.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "scorer", "variants": [{"name": "stable", "uri": str(base_model), "weight": 100},
                                       {"name": "canary", "uri": str(new_model), "weight": 0}],
        "rollout": {"variant": "canary", "steps": [20, 100], "interval_s": 1, "min_requests": 100,
                    # identical models must never look 5x apart; the slow one is judged against a tighter bound
                    "max_p99_ratio": 5 if case == "healthy" else 2}}))
    host = server(f"--config={spec}")
    status_url = f"http://{host}/mlplat/rollouts/scorer"
    assert httpx.get(status_url).json()["weight"] == 20
    req = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    deadline, status, failures = time.time() + 150, None, 0
    with httpx.Client() as c:
        while time.time() < deadline:
            for _ in range(50):
                failures += c.post(f"http://{host}/v2/models/scorer/infer", json=req).status_code != 200
            status = c.get(status_url).json()
            if status["state"] != "running":
                break
    assert failures == 0
    if case == "healthy":
        assert (status["state"], status["weight"]) == ("completed", 100)
        assert [h["action"] for h in status["history"]] == ["advance"]
    else:
        assert (status["state"], status["weight"]) == ("rolled_back", 0)
        assert status["history"][-1]["action"] == "rollback" and "p99" in status["history"][-1]["summary"]
    weights = {l.split('variant="')[1].split('"')[0]: float(l.split()[-1])
               for l in httpx.get(f"http://{host}/metrics").text.splitlines() if l.startswith("mlplat_variant_weight{")}
    assert weights == ({"stable": 0.0, "canary": 100.0} if case == "healthy" else {"stable": 100.0, "canary": 0.0})
    audited = [r for r in ws.audit.records(50) if r["action"].startswith("serving.rollout.")]
    assert audited and audited[0]["action"] == ("serving.rollout.advance" if case == "healthy" else "serving.rollout.rollback")
