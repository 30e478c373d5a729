"""Residency covers every movement — source registration, training set build, job placement, artifact store, deployment
target, materialization to the online store — refusing before any write, audited; `mlplat compliance report` shows an
auditor the datasets, movements, blocked attempts, model provenance, alias history and the audit chain's status."""
import json
import sqlite3
from pathlib import Path

import mlflow
import pytest

from helpers import REPO, X, Y, run_cli, stored_files, tiny_job, write_notebook, write_pipeline
from mlplat.errors import ResidencyViolation


def register_on(ws, ts):
    "A model trained on training set `ts` (the run says so), registered as the next version of 'churn-risk'."
    from sklearn.linear_model import LogisticRegression
    from mlplat.models.onnx import flavor_requirements
    mlflow.set_tracking_uri(ws.config.tracking_uri)
    ws.mlflow_client()
    with mlflow.start_run() as r:
        mlflow.set_tag("mlplat.training_set", ts.id)
        mlflow.sklearn.log_model(LogisticRegression().fit(X, Y), name="model", input_example=X[:5],
                                 pip_requirements=flavor_requirements("sklearn"))
    return r.info.run_id


def counts(ws):
    "What a refused movement must not have changed: rows of the platform tables, registered versions, files."
    with sqlite3.connect(ws.config.home / "platform.db") as c:
        tables = {t: c.execute(f"select count(*) from {t}").fetchone()[0] for t in ("datasets", "training_sets", "jobs")}
    files = sorted(p.name for p in (ws.config.home / "data").rglob("*") if p.is_file())
    return tables, files


def test_residency_blocks_every_movement_and_the_report_shows_it(churn_ws, churn, tmp_path, monkeypatch):
    ws = churn_ws
    ts = ws.features.training_set(churn.labels, service="churn_v1", name="churn")
    run_id = register_on(ws, ts)
    mv = ws.models.register(run_id, "churn-risk", sample=X[:64])
    ws.models.promote("churn-risk", mv.version, "champion", reason="first <b>model</b>")
    before = counts(ws)

    import mlplat
    from mlplat.jobs.spec import TrainingJob
    attempts = {
        "source registration": lambda w: w.features.register_source("abroad", churn.customers, classification="personal",
                                                                     region="us-east-1", timestamp_field="event_timestamp"),
        "job placement": lambda w: w.jobs.submit(TrainingJob(name="abroad", entrypoint=str(REPO / "templates" / "training" / "train_tabular.py"),
                                                             training_set=ts.id, region="eu-west-1")),
        "deployment target": lambda w: w.models.promote("churn-risk", mv.version, "challenger", region="eu-west-1"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(Exception) as e:
            attempt(ws)
        assert "eu-west-1" in str(e.value) or "us-east-1" in str(e.value), (what, e.value)
    for env, attempt in (("MLPLAT_FEAST_ONLINE_STORE_REGION", lambda w: w.features.materialize()),            # online store
                         ("MLPLAT_MODELS_ARTIFACT_REGION", lambda w: w.models.register(run_id, "churn-risk", sample=X[:64]))):
        monkeypatch.setenv(env, "eu-west-1")
        with pytest.raises(ResidencyViolation, match="eu-west-1"):
            attempt(mlplat.connect(ws.config.home))
        monkeypatch.delenv(env)
    assert counts(ws) == before                                                  # nothing written by any of them
    assert [v.version for v in ws.models.versions("churn-risk")] == [mv.version]

    p = run_cli("compliance", "report", "--format", "json", check=0)
    report = json.loads(p.stdout)
    assert report["audit_chain"]["ok"] and report["summary"]["audit_chain_intact"]
    assert {d["id"]: d["classification"] for d in report["datasets"]} == {"customers@1": "personal", "transactions@1": "personal"}
    assert all(d["encrypted_at_rest"] and d["stored_in"] == ws.config.workspace.region for d in report["datasets"])
    assert "training_set:churn@1" in next(d for d in report["datasets"] if d["id"] == "customers@1")["derived"]
    model = report["models"][0]
    assert (model["model"], model["training_set"], model["datasets"], model["aliases"], model["encrypted_at_rest"]) == \
        ("churn-risk", "churn@1", ["customers@1", "transactions@1"], ["champion"], True)
    assert [(a["alias"], a["to_version"], a["reason"]) for a in report["alias_history"]] == [("champion", 1, "first <b>model</b>")]
    moved = {m["action"] for m in report["movements"] if m["outcome"] == "success"}
    assert {"datasets.register", "training_sets.create", "features.apply", "models.register", "models.promote"} <= moved
    blocked = {}
    for b in report["blocked"]: blocked.setdefault(b["action"], []).append(b["reason"])
    for action in ("datasets.register", "jobs.submit", "features.materialize", "models.register", "models.promote"):
        assert any("eu-west-1" in r or "us-east-1" in r for r in blocked.get(action, [])), (action, blocked)

    out = tmp_path / "report.html"
    p = run_cli("compliance", "report", "-o", out, check=0)
    page = out.read_text()
    assert "<b>model</b>" not in page and "first &lt;b&gt;model&lt;/b&gt;" in page and "intact" in page
    assert page.count("<h2>") >= 8 and "Blocked attempts" in page and "customers@1" in page

    with sqlite3.connect(ws.config.home / "platform.db") as c:                    # someone edits the trail
        c.execute("update audit_log set principal = 'nobody' where seq = 3")
    out2 = tmp_path / "broken.html"
    p = run_cli("compliance", "report", "-o", out2, check=4)
    assert "does not verify" in p.stderr and "record 3" in p.stderr and "BROKEN" in out2.read_text()
    p = run_cli("compliance", "report", env_extra={"MLPLAT_USER": "mallory"}, check=3)
    assert "may not audit:export" in p.stderr


@pytest.mark.slow   # a real job (torchrun) and a pipeline step in a kernel
def test_artifact_store_residency_for_job_models_and_pipeline_notebooks(churn_ws, churn_set, tmp_path, monkeypatch):
    """A job's model and held-out rows, and a pipeline's executed notebooks, go to MLflow's artifact store only where
    residency allows: refused (audited, as the job's principal) before any byte moves, and the work says why."""
    ws = churn_ws
    job = tiny_job(tmp_path, monkeypatch, training_set=churn_set.id)
    write_pipeline(tmp_path, {"name": "show", "steps": [{"name": "show", "notebook": "show.ipynb"}]})
    write_notebook(tmp_path / "show.ipynb", "n = 1", "print('customer', 4242 + n)")
    monkeypatch.setenv("MLPLAT_MODELS_ARTIFACT_REGION", "eu-west-1")    # personal data may live in ae-* only
    before = stored_files(ws)
    rec = ws.jobs.submit(job, wait=True, timeout=300)                  # a real process (torchrun), as the submitter
    log = "".join(ws.jobs.logs(rec.id))
    assert rec.state == "failed" and "ResidencyViolation" in log and "jobs.log_model refused: personal data" in log, log
    import mlplat
    run = mlplat.connect(ws.config.home).pipelines.run(tmp_path / "show.yaml")   # the run goes on; its notebook stays home
    assert run.status == "succeeded" and Path(run.steps["show"].notebook).is_file()
    assert stored_files(ws) == before                                  # neither wrote a byte to the artifact store
    tags = ws.mlflow_client().get_run(run.mlflow_run_id).data.tags
    assert tags["step.show.notebook"].startswith("not uploaded: pipeline.log_notebook refused") and "eu-west-1" in tags["step.show.notebook"]
    records = ws.audit.records(limit=None)
    refused = {r["action"]: r for r in records if r["outcome"] == "denied" and r["region"] == "eu-west-1"}
    assert (refused["jobs.log_model"]["principal"], refused["jobs.log_model"]["resource"], refused["jobs.log_model"]["details"]["classification"]) \
        == (ws.principal.name, f"mlflow_run:{rec.mlflow_run_id}", "personal")
    assert refused["pipeline.log_notebook"]["details"]["step"] == "show"
    finished = next(r for r in records if r["action"] == "pipeline.run" and r["resource"] == f"pipeline_run:{run.id}")
    assert "eu-west-1" in finished["details"]["notebooks_not_uploaded"]["show"]
    blocked = {b["action"] for b in ws.compliance_report()["blocked"]}
    assert {"jobs.log_model", "pipeline.log_notebook"} <= blocked
