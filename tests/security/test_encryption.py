"""Encryption at rest: ONNX artifacts, dataset snapshots, training sets and the rows and executed notebooks in MLflow's
artifact store are sealed (AES-256-GCM envelopes, a data key per file wrapped by the workspace's key-encryption key). The server still serves sealed models; a tampered file
never loads and the refusal is audited; key rotation re-wraps data keys without re-encrypting the data."""
import json
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from helpers import X, Y, onnx_chain, register_version, run_cli, stored_files, tiny_job, write_notebook, write_pipeline
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
    files = {str(p.relative_to(ws.config.artifact_root)): p for p in stored_files(ws)}
    rows_at = [f for f in files if f.endswith("/inputs.npy")]
    assert len(rows_at) == 2 and any("holdout/" in f for f in rows_at) and any(f"reference/v{mv.version}/" in f for f in rows_at)
    notebook = next(f for f in files if f.endswith("steps/show.ipynb"))
    assert all(is_sealed(files[f]) for f in [*rows_at, notebook])
    assert not any(f.endswith("input_example.json") for f in files)        # MLflow's own plaintext copy is not kept
    for f, path in files.items():                                            # no row, and no printed output, in the clear
        data = path.read_bytes()
        assert not any(r.tobytes() in data for r in rows) and b"42.424" not in data and b"customer 4243" not in data, f
