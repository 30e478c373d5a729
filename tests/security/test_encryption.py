"""Encryption at rest: ONNX artifacts, dataset snapshots, training sets and the rows and executed notebooks in MLflow's
artifact store are sealed (AES-256-GCM envelopes, a data key per file wrapped by the workspace's key-encryption key). The server still serves sealed models; a tampered file
never loads and the refusal is audited; key rotation re-wraps data keys without re-encrypting the data. The prediction
and outcome logs (request inputs) are sealed frame by frame and still read by monitoring and A/B reports; a torn
frame is skipped, an altered one refused; a region that may not hold the data gets no log file at all; a lost key file
is an error even when only logs are sealed. Executed pipeline notebooks are sealed in the run's folder too."""
import json
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from helpers import X, Y, logged_predictions, onnx_chain, register_version, run_cli, stored_files, tiny_job, write_notebook, write_pipeline
from mlplat.errors import AuditIntegrityError
from mlplat.governance.crypto import MAGIC, is_sealed


def _weights(plain: bytes) -> list[bytes]:
    "The float32 bytes of every coefficient of a (decrypted) linear-model ONNX file."
    m = onnx.load_from_string(plain)
    ws = [w for n in m.graph.node for a in n.attribute if a.name == "coefficients" for w in a.floats]
    assert len(ws) >= 4
    return [np.float32(w).tobytes() for w in ws]


def _body(path: Path) -> bytes:
    "A sealed file's encrypted chunks (everything after its header)."
    data = path.read_bytes()
    return data[len(MAGIC) + 4 + int.from_bytes(data[len(MAGIC):len(MAGIC) + 4], "big"):]


@pytest.mark.services
def test_sealed_model_is_served_but_not_loadable_from_disk(ws, server):
    import onnxruntime as ort
    mv = register_version(ws, 1.0)
    ws.models.promote("risk", mv.version, "champion")
    rest = server("risk=models:/risk@champion", refresh="0")
    on_disk = sorted(Path(ws.config.artifact_root).rglob("model.onnx")) + sorted((ws.config.home / "serving-cache").rglob("*.onnx"))
    assert len(on_disk) == 2, on_disk                       # the artifact store's copy and the server's cache
    weights = _weights(ws.crypto.open_bytes(on_disk[0]))
    for path in on_disk:
        data = path.read_bytes()
        assert is_sealed(path) and not any(w in data for w in weights), path
        with pytest.raises(Exception):
            ort.InferenceSession(str(path))
    body = {"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "data": X[:3].ravel().tolist()}]}
    r = httpx.post(f"http://{rest}/v2/models/risk/infer", json=body)
    assert r.status_code == 200, r.text
    from sklearn.linear_model import LogisticRegression
    expected = LogisticRegression(C=1.0).fit(X, Y).predict(X[:3])
    labels = next(o for o in r.json()["outputs"] if o["name"] == "label")["data"]
    assert labels == expected.tolist()


def test_tampered_model_never_loads_and_is_audited(ws):
    register_version(ws, 1.0)
    stored = next(Path(ws.config.artifact_root).rglob("model.onnx"))
    data = bytearray(stored.read_bytes()); data[len(data) // 2] ^= 0x40
    stored.write_bytes(bytes(data))
    p = run_cli("serve", "--model", "risk=models:/risk/1", "--port", "0", "--auth", "off", check=4)
    assert "failed authentication" in p.stderr and "it was not loaded" in p.stderr and "Traceback" not in p.stderr
    refused = [r for r in ws.audit.records(limit=None) if r["action"] == "crypto.open"]
    assert refused and refused[0]["outcome"] == "denied" and "model.onnx" in refused[0]["resource"]
    # replaced by an unencrypted (attacker's) model: refused as well, the version was registered sealed
    import shutil
    shutil.rmtree(ws.config.home / "serving-cache", ignore_errors=True)
    onnx_chain(stored)
    with pytest.raises(AuditIntegrityError, match="replaced by an unencrypted file"):
        from mlplat.serving.models import read_model
        read_model(ws, "models:/risk/1")


def test_rotation_rewraps_without_reencrypting(churn_ws, churn):
    ws = churn_ws
    ts = ws.features.training_set(churn.labels, service="churn_v1", name="churn")
    mv = register_version(ws, 1.0)
    files = [Path(ws.features.datasets.get("customers").path), Path(ts.path),
             next(Path(ws.config.artifact_root).rglob("model.onnx"))]
    assert all(is_sealed(f) for f in files) and b"PAR1" not in files[0].read_bytes()
    before = {f: (_body(f), ws.crypto.kek_of(f)) for f in files}
    assert len({kek for _, kek in before.values()}) == 1
    p = run_cli("keys", "rotate", "--json", check=0)
    out = json.loads(p.stdout)
    assert out["rewrapped"] >= 3
    keys = json.loads(run_cli("keys", "list", "--json", check=0).stdout)
    assert [k["current"] for k in keys] == [False, True] and keys[1]["id"] == out["key"]
    assert not any("key" in k and len(str(k.get("key"))) > 30 for k in keys)      # never key material
    import mlplat
    ws2 = mlplat.connect(ws.config.home)
    for f in files:
        assert _body(f) == before[f][0] and ws2.crypto.kek_of(f) == f"local:{out['key']}"
    assert ws2.features.get_training_set("churn").to_df().equals(ts.to_df())
    assert len(ws2.features.datasets.get("customers").to_df()) == len(churn.customers)
    from mlplat.serving.models import read_model
    assert read_model(ws2, f"models:/risk/{mv.version}")[2].startswith(b"\x08")   # an ONNX protobuf again
    rotated = [r for r in ws2.audit.records(limit=None) if r["action"] == "keys.rotate"]
    assert rotated[0]["outcome"] == "success" and rotated[0]["details"]["rewrapped"] == out["rewrapped"]
    p = run_cli("keys", "rotate", env_extra={"MLPLAT_USER": "mallory"}, check=3)
    assert "may not keys:rotate" in p.stderr


def test_a_lost_key_file_is_an_error_not_a_new_key(ws, tmp_path):
    import pandas as pd
    from mlplat.errors import ConfigError
    df = pd.DataFrame({"id": [1, 2], "event_timestamp": pd.to_datetime(["2026-01-01", "2026-01-02"], utc=True), "x": [1.0, 2.0]})
    first = ws.features.register_source("secret", df, classification="internal", timestamp_field="event_timestamp")
    assert is_sealed(first.path)
    key_file = ws.config.key_file
    key_file.rename(key_file.with_name("kek.json.bak"))       # lost (or moved) while sealed data exists
    ws.__dict__.pop("crypto", None)                            # a fresh process would read the key file again
    with pytest.raises(ConfigError, match="is missing, but sealed files exist"):
        ws.features.register_source("other", df.assign(x=3.0), classification="internal", timestamp_field="event_timestamp")
    assert not key_file.exists()
    df.to_csv(tmp_path / "more.csv", index=False)
    p = run_cli("datasets", "register", "more", str(tmp_path / "more.csv"), "--classification", "internal", check=2)
    assert "restore the key file" in p.stderr and "Traceback" not in p.stderr and not key_file.exists()
    key_file.with_name("kek.json.bak").rename(key_file)        # restored: everything opens again
    ws.__dict__.pop("crypto", None)
    assert ws.features.datasets.get("secret").to_df().x.tolist() == [1.0, 2.0]


@pytest.mark.slow   # a real job (torchrun) and a pipeline step in a kernel
def test_rows_and_executed_notebooks_in_the_artifact_store_are_sealed(ws, tmp_path, monkeypatch):
    """A job's held-out rows (and its input example), the registry's reference rows and a pipeline's executed notebooks
    reach MLflow's artifact store sealed; the registry still gates on the rows and monitoring still reads them."""
    rec = ws.jobs.submit(tiny_job(tmp_path, monkeypatch), wait=True, timeout=300)
    assert rec.state == "succeeded", "".join(ws.jobs.logs(rec.id))
    import tiny_job as job
    rows = job.rows()
    mv = ws.models.register(rec.mlflow_run_id, "tiny")                       # parity on the sealed held-out rows
    assert {g["gate"]: bool(g["passed"]) for g in ws.models.gates("tiny", mv.version)} == {"parity": True, "latency": True}
    ref = ws.monitoring.reference("tiny", mv.version)                        # the sealed reference rows, opened
    assert np.array_equal(ref["inputs"]["input"], rows) and ref["names"] == {"input": ["a", "b", "c", "d"]}
    write_notebook(tmp_path / "show.ipynb", "n = 1", "print('customer', 4242 + n)")
    write_pipeline(tmp_path, {"name": "show", "classification": "internal", "steps": [{"name": "show", "notebook": "show.ipynb"}]})
    run = ws.pipelines.run(tmp_path / "show.yaml")
    local = Path(run.steps["show"].notebook)                                 # the run's own copy: sealed at rest too
    assert run.status == "succeeded" and is_sealed(local) and b"customer 4243" not in local.read_bytes()
    assert b"customer 4243" in ws.pipelines.notebook(run.id, "show")
    log = local.with_suffix(".log")                                         # the kernel's output is in the step's log too
    assert is_sealed(log) and b"customer 4243" not in log.read_bytes() and "customer 4243" in ws.pipelines.step_log(run.id, "show")["text"]
    files = {str(p.relative_to(ws.config.artifact_root)): p for p in stored_files(ws)}
    rows_at = [f for f in files if f.endswith("/inputs.npy")]
    assert len(rows_at) == 2 and any("holdout/" in f for f in rows_at) and any(f"reference/v{mv.version}/" in f for f in rows_at)
    notebook = next(f for f in files if f.endswith("steps/show.ipynb"))
    assert all(is_sealed(files[f]) for f in [*rows_at, notebook])
    assert not any(f.endswith("input_example.json") for f in files)        # MLflow's own plaintext copy is not kept
    for f, path in files.items():                                            # no row, and no printed output, in the clear
        data = path.read_bytes()
        assert not any(r.tobytes() in data for r in rows) and b"42.424" not in data and b"customer 4243" not in data, f


# ---- the prediction and outcome logs: request inputs at rest ---------------------------------------------------------
SECRET = 4242.5      # an input value no frame header, key or timestamp can contain by chance


def _infer(base, name, n, value=SECRET):
    for i in range(n):
        r = httpx.post(f"http://{base}/v2/models/{name}/infer", json={"id": f"r{i}", "inputs": [
            {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [value, 1.0, 2.0, float(i)]}]})
        assert r.status_code == 200, r.text


@pytest.mark.services
def test_prediction_and_outcome_logs_are_sealed_and_still_read_by_monitoring_and_ab(ws, server, tmp_path):
    base = server(f"shop={onnx_chain(tmp_path / 'm.onnx')}")
    _infer(base, "shop", 12)
    assert len(logged_predictions(ws, "shop", 12)) == 12
    ws.serving.log_outcomes("shop", [{"request_id": f"r{i}", "outcome": i % 2} for i in range(12)])
    files = sorted((ws.config.home / "predictions").rglob("*")) + sorted((ws.config.home / "outcomes").rglob("*"))
    files = [f for f in files if f.is_file()]
    assert [f.suffix for f in files] == [".sealed", ".sealed"] and all(is_sealed(f) for f in files)
    needles = [str(SECRET).encode(), np.float32(SECRET).tobytes(), b"request_id", b'"r1"']
    assert not any(n in f.read_bytes() for f in files for n in needles)          # no input, id or outcome in the clear
    served = {d["name"]: d for d in ws.monitoring.deployments("1h")}            # what the sidebar shows, from the log
    assert served["shop"]["requests"] == 12 and served["shop"]["last_request"]
    rep = ws.serving.ab_report("shop")
    assert (rep["requests"], rep["with_outcome"]) == (12, 12)
    out = json.loads(run_cli("ab", "report", "shop", "--json", check=0).stdout)   # another process, the same keys
    assert out["requests"] == 12

    # a byte altered inside a frame: the day file is refused (and audited), never half-read
    day = files[0]
    data = bytearray(day.read_bytes()); data[-5] ^= 0x01
    day.write_bytes(bytes(data))
    with pytest.raises(AuditIntegrityError, match="failed authentication at byte"):
        ws.monitoring.deployments("1h")
    refused = [r for r in ws.audit.records(limit=None) if r["action"] == "crypto.open"]
    assert refused and refused[0]["outcome"] == "denied" and day.name in refused[0]["resource"]
    p = run_cli("ab", "report", "shop", check=4)
    assert "failed authentication" in p.stderr and "Traceback" not in p.stderr


def test_a_frame_cut_off_by_a_crash_is_skipped_and_the_log_goes_on(ws):
    "A crash mid-frame: reports skip the torn frame (counted) and read what a restarted writer appended after it."
    import os
    import time
    from mlplat.serving.prediction_log import PredictionLog, predictions_folder
    def write(ids):
        plog = PredictionLog(ws.config.home, keys=ws.crypto).start(["shop"])
        for rid in ids:
            plog.add("shop", "1", "a" if rid[-1] in "02468" else "b", rid, 0.001, {"input": [SECRET]}, {"output": [1.0]})
        plog.close()
    write([f"r{i}" for i in range(10)])
    [day] = predictions_folder(ws.config.home, "shop").glob("*.sealed")
    size = day.stat().st_size
    write(["cut1", "cut2"])
    with open(day, "r+b") as f: f.truncate(size + 40)             # the second writer's frame, cut off by the crash
    old = time.time() - 60
    os.utime(day, (old, old))                                     # untouched since: not a frame being written
    rep = ws.serving.ab_report("shop")
    assert (rep["requests"], rep["skipped_lines"]) == (10, 1)
    write(["after"])                                              # the restarted server appends after the torn frame
    ws.serving.log_outcomes("shop", [{"request_id": "after", "outcome": 1}])
    rep = ws.serving.ab_report("shop")
    assert (rep["requests"], rep["with_outcome"], rep["skipped_lines"]) == (11, 1, 1)


@pytest.mark.services
def test_a_region_that_may_not_hold_the_data_leaves_no_log_file(ws, server, tmp_path, monkeypatch):
    "Personal data may live in ae-* only: a workspace in us-east-1 serves a model of unknown lineage, but logs nothing."
    monkeypatch.setenv("MLPLAT_REGION", "us-east-1")
    base = server(f"shop={onnx_chain(tmp_path / 'm.onnx')}")
    _infer(base, "shop", 5)
    import time
    end = time.time() + 30
    while "reason=\"residency\"} 5.0" not in (metrics := httpx.get(f"http://{base}/metrics").text) and time.time() < end:
        time.sleep(0.1)
    assert 'mlplat_prediction_log_dropped_total{reason="residency"} 5.0' in metrics
    assert not (ws.config.home / "predictions").exists()         # not a byte, not a folder
    denied = [r for r in ws.audit.records(limit=None) if r["action"] == "serving.prediction_log"]
    assert denied[0]["outcome"] == "denied" and denied[0]["region"] == "us-east-1" and "personal" in denied[0]["details"]["reason"]
    started = next(r for r in ws.audit.records(limit=None) if r["action"] == "serving.start")
    assert started["details"]["prediction_log"]["refused"] == ["shop"]
    import mlplat
    from mlplat.errors import ResidencyViolation
    with pytest.raises(ResidencyViolation, match="us-east-1"):
        mlplat.connect(ws.config.home).serving.log_outcomes("shop", [{"request_id": "r1", "outcome": 1}])
    assert not (ws.config.home / "outcomes").exists()


def test_a_lost_key_file_is_an_error_when_only_logs_are_sealed(ws):
    from mlplat.errors import ConfigError, NotFoundError
    ws.serving.log_outcomes("shop", [{"request_id": "r1", "outcome": 1}])   # the workspace's first sealed file
    [sealed] = (ws.config.home / "outcomes" / "shop").glob("*.sealed")
    from mlplat.governance.crypto import sealed_files, sealed_roots
    assert list(sealed_files(sealed_roots(ws.config))) == [sealed]                  # the only sealed file: a log
    key_file = ws.config.key_file
    key_file.rename(key_file.with_name("kek.json.bak"))
    ws.__dict__.pop("crypto", None)
    with pytest.raises(NotFoundError, match="does not exist, so nothing sealed can be decrypted"):   # today's file: its key
        ws.serving.log_outcomes("shop", [{"request_id": "r2", "outcome": 0}])
    with pytest.raises(ConfigError, match="is missing, but sealed files exist"):                    # a new file: never a new key
        ws.serving.log_outcomes("other", [{"request_id": "r2", "outcome": 0}])
    assert not key_file.exists()
    from mlplat.serving.prediction_log import read_outcomes
    with pytest.raises(NotFoundError, match="does not exist"):
        read_outcomes(ws.config.home, "shop", keys=ws.crypto)
    key_file.with_name("kek.json.bak").rename(key_file)
    ws.__dict__.pop("crypto", None)
    assert read_outcomes(ws.config.home, "shop", keys=ws.crypto) == {"r1": 1.0}
