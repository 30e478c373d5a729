"""The Kubernetes job backend through the official `kubernetes` client against a local HTTP double of the API:
submit (the TrainJob the double accepts is valid against the real CRD), status transitions from the TrainJob's
conditions, logs from the launcher pod, retries, cancel (Foreground delete), dry runs and refusals."""
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from helpers import crd_schema, run_cli, undeclared_fields
from k8s_api_double import TRAINJOB_CRD, KubeApiDouble
from mlplat.errors import ValidationError

@pytest.fixture
def kube(home, monkeypatch, tmp_path):
    with KubeApiDouble() as api:
        api.configure(monkeypatch, tmp_path, "registry.local/mlplat-train:0.1")
        yield api


@pytest.fixture
def script(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "helpers.py").write_text("SCALE = 2\n")
    (code / "train.py").write_text("import helpers\nprint('training', helpers.SCALE)\n")
    return code / "train.py"


def job_spec(script, **kw):
    return {"name": "churn-k8s", "entrypoint": str(script), "backend": "kubernetes", **kw}


def test_submit_follow_conditions_and_logs(kube, churn_ws, churn_set, script):
    rec = churn_ws.jobs.submit(job_spec(script, training_set=churn_set.id, spot=True, priority_class="low", timeout="2h",
                                        resources={"nodes": 2, "gpus_per_node": 8, "processes_per_node": 8, "memory": "64Gi"}))
    assert rec.state == "queued" and rec.backend == "kubernetes"
    obj = kube.trainjobs[("default", rec.id)]  # accepted: valid against the CRD schema
    trainer = obj["spec"]["trainer"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in trainer["env"]}
    assert env["MLPLAT_JOB_ID"] == rec.id and env["MLPLAT_TRAINING_SET"] == churn_set.id
    # the pods act as the submitter through a delegated token that lives in a Secret the TrainJob owns, never in it
    ref = env["MLPLAT_TOKEN"]["secretKeyRef"]
    secret = kube.secrets[("default", ref["name"])]
    assert secret["stringData"][ref["key"]].startswith("mlpd_") and secret["stringData"][ref["key"]] not in json.dumps(obj)
    assert secret["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert (trainer["numNodes"], trainer["numProcPerNode"], trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"]) == (2, 8, 8)
    assert trainer["command"][-1] == f"{rec.workdir}/code/train.py" and trainer["image"] == "registry.local/mlplat-train:0.1"
    assert (Path(rec.workdir) / "code" / "helpers.py").exists()  # the script's folder travels with the job
    assert obj["metadata"]["labels"]["mlplat.dev/job-id"] == rec.id and obj["spec"]["activeDeadlineSeconds"] == 7200
    assert "mlplat-home" in json.dumps(obj["spec"]["runtimePatches"])
    ds = json.loads((Path(rec.workdir) / "deepspeed.json").read_text())
    assert ds["bf16"]["enabled"] is True  # precision: auto resolves against the GPUs the job asks for, not this machine

    kube.set_status(rec.id, conditions=[("Suspended", "Queued", "waiting for quota in cluster queue gpu")])
    st = churn_ws.jobs.status(rec.id)
    assert st.state == "queued" and "waiting for quota" in st.message

    kube.set_status(rec.id, active=1)
    kube.set_pod(rec.id, "node", 0)
    kube.set_pod(rec.id, "launcher", 0, log="epoch 1 loss 0.61\n")
    assert churn_ws.jobs.status(rec.id).state == "running"
    out = run_cli("jobs", "logs", rec.id, check=0).stdout
    assert out.endswith("epoch 1 loss 0.61\n") and "b'" not in out and "sshd" not in out   # the text, not a repr of bytes

    kube.set_pod(rec.id, "launcher", 0, log="epoch 1 loss 0.61\nepoch 2 loss 0.48\ndone\n", exit_code=0, phase="Succeeded")
    kube.set_status(rec.id, conditions=[("Complete", "JobsCompleted", "TrainJob is completed")], succeeded=1)
    done = churn_ws.jobs.wait(rec.id, timeout=30)
    assert (done.state, done.exit_code) == ("succeeded", 0) and done.started_at and done.finished_at
    [spent] = churn_ws.cost.records(kind="job")   # what the cluster reserved: 2 nodes x (8 GPUs, 64Gi), for as long as it ran
    assert (spent["subject"], spent["source"], spent["spot"], spent["usage"]["gpus"], spent["memory_peak_mb"]) == \
        (rec.id, "kubernetes-requests", True, 16, 131072.0)
    assert spent["gpu_seconds"] == pytest.approx(16 * spent["wall_seconds"], abs=0.01)
    text = "".join(churn_ws.jobs.logs(rec.id))
    assert text.count("epoch 1 loss") == 1 and "epoch 2 loss 0.48" in text
    assert all(r[0] != "DELETE" for r in kube.requests)


def test_failure_is_retried_then_reported(kube, churn_ws, script):
    rec = churn_ws.jobs.submit(job_spec(script, retries=1))
    kube.set_pod(rec.id, "launcher", log="Traceback (most recent call last):\nValueError: bad shard 7\n", exit_code=3, phase="Failed")
    kube.set_status(rec.id, conditions=[("Failed", "FailedJobs", "jobset failed: launcher exited 3")], failed=1)
    again = churn_ws.jobs.status(rec.id)
    assert again.state == "running" or again.state == "queued"
    assert again.attempt == 2 and ("default", rec.id) not in kube.trainjobs  # the failed attempt is cleaned up
    second = f"{rec.id}-a2"
    assert kube.trainjobs[("default", second)]["metadata"]["labels"]["mlplat.dev/attempt"] == "2"
    kube.set_pod(second, "launcher", log="Traceback (most recent call last):\nValueError: bad shard 7\n", exit_code=3, phase="Failed")
    kube.set_status(second, conditions=[("Failed", "FailedJobs", "jobset failed: launcher exited 3")], failed=1)
    done = churn_ws.jobs.wait(rec.id, timeout=30)
    assert (done.state, done.exit_code, done.attempt) == ("failed", 3, 2)
    assert "FailedJobs" in done.message and "mlplat jobs logs" in done.message
    out = run_cli("jobs", "logs", rec.id, check=0).stdout
    assert out.count("ValueError: bad shard 7") == 2 and "retrying as attempt 2" in out


def test_cancel_deletes_the_trainjob(kube, churn_ws, script):
    rec = churn_ws.jobs.submit(job_spec(script))
    kube.set_status(rec.id, active=1)
    kube.set_pod(rec.id, "launcher", log="step 1\n")
    assert churn_ws.jobs.status(rec.id).state == "running"
    out = run_cli("jobs", "cancel", rec.id, "--json", check=0).stdout
    assert '"state": "cancelled"' in out
    deletes = [r for r in kube.requests if r[0] == "DELETE"]
    assert len(deletes) == 1 and deletes[0][1].endswith(f"/trainjobs/{rec.id}") and deletes[0][3]["propagationPolicy"] == "Foreground"
    assert ("default", rec.id) not in kube.trainjobs and not kube.pods and not kube.secrets   # its identity went with it
    assert churn_ws.jobs.status(rec.id).state == "cancelled"


def test_dry_run_prints_a_valid_trainjob(kube, churn_ws, script, tmp_path, monkeypatch):
    monkeypatch.delenv("MLPLAT_KUBERNETES_HOME_CLAIM")  # a dry run needs neither the claim nor a reachable cluster
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({**job_spec(script), "resources": {"nodes": 2, "gpus_per_node": 4, "processes_per_node": 4}}))
    out = run_cli("jobs", "submit", spec, "--dry-run", check=0).stdout
    assert out.startswith("# kubernetes.home_claim is not set")
    manifest = yaml.safe_load(out)
    jsonschema.validate(manifest, crd_schema(TRAINJOB_CRD))
    assert undeclared_fields(manifest, crd_schema(TRAINJOB_CRD)) == []
    assert manifest["kind"] == "TrainJob" and manifest["spec"]["trainer"]["numNodes"] == 2
    assert not kube.trainjobs and churn_ws.jobs.list() == []
    refused = run_cli("jobs", "submit", spec, check=1)
    assert "kubernetes.home_claim" in refused.stderr and "Traceback" not in refused.stderr


def test_refusals_leave_nothing_behind(kube, churn_ws, script, tmp_path, monkeypatch):
    import mlplat
    kube.token = "rotated"  # our credentials are no longer accepted
    with pytest.raises(ValidationError, match="401"):
        churn_ws.jobs.submit(job_spec(script))
    kube.token = "test-token"
    dead = KubeApiDouble()  # never started: nothing listens at its address
    monkeypatch.setenv("MLPLAT_KUBERNETES_KUBECONFIG", str(dead.kubeconfig(tmp_path / "dead-kubeconfig")))
    dead.server.server_close()
    with pytest.raises(ValidationError, match="cannot reach the Kubernetes API"):
        mlplat.connect().jobs.submit(job_spec(script))
    jobs_dir = churn_ws.config.home / "jobs"
    assert churn_ws.jobs.list() == [] and not kube.trainjobs
    assert not jobs_dir.exists() or not any(jobs_dir.iterdir())
