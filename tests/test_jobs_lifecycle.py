"""The job lifecycle with real DeepSpeed processes, on the local backend and on a real local Ray head:
success (tracked in MLflow, linked in lineage, re-attached after a kernel restart), crash (retried, then failed
with its traceback), cancel (no orphans), governance."""
import re
import time
from pathlib import Path

import psutil
import pytest

from helpers import REPO, TEMPLATE, run_cli
from mlplat.errors import PermissionDenied, ResidencyViolation
from mlplat.jobs.backend import TERMINAL


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.services)])
def backend(request, home, monkeypatch):
    "Every job of the test runs on this backend (jobs.default_backend), for the API and the CLI alike."
    if request.param == "ray":
        monkeypatch.setenv("MLPLAT_RAY_ADDRESS", request.getfixturevalue("ray_address"))
    monkeypatch.setenv("MLPLAT_JOBS_DEFAULT_BACKEND", request.param)
    return request.param


@pytest.mark.slow
def test_churn_job_trains_and_is_tracked(backend, churn_ws, churn_set, home):
    from mlplat.jobs.spec import TrainingJob
    job = TrainingJob("churn-mlp", str(TEMPLATE), args=["--epochs", "3"], training_set=churn_set.id,
                      deepspeed={"zero_stage": 2, "micro_batch_size": 32}, resources={"processes_per_node": 2}, timeout="10m")
    rec = churn_ws.jobs.submit(job)
    assert rec.state in ("queued", "running") and rec.mlflow_run_id and rec.backend == backend
    import mlplat
    again = mlplat.connect(home)  # a restarted kernel re-attaches by id
    port = rec.command[rec.command.index("--master_port") + 1]
    buffers, seen, deadline = f"deepspeed_allreduce_buffer_*_{port}_*", set(), time.time() + 400
    while again.jobs.status(rec.id).state not in TERMINAL and time.time() < deadline:
        seen |= {f.name for f in Path("/dev/shm").glob(buffers)}
        time.sleep(0.5)
    done = again.jobs.wait(rec.id, timeout=10)
    assert done.state == "succeeded", "".join(again.jobs.logs(rec.id))
    # DeepSpeed's CPU all-reduce buffers (one per rank, in RAM) are gone with the job
    assert len(seen) == 2 and not list(Path("/dev/shm").glob(buffers)), seen
    assert done.exit_code == 0 and done.attempt == 1
    run = churn_ws.mlflow_client().get_run(rec.mlflow_run_id).data
    assert run.metrics["test_auc"] > 0.65 and run.params["world_size"] == "2" and run.params["zero_stage"] == "2"
    assert run.tags["mlplat.job_id"] == rec.id
    assert {f"job:{rec.id}", f"mlflow_run:{rec.mlflow_run_id}"} <= set(churn_ws.lineage.of(churn_set)["downstream_nodes"])
    listed = run_cli("jobs", "list", "--json", check=0)
    assert rec.id in listed.stdout
    logs = run_cli("jobs", "logs", rec.id, check=0).stdout
    assert "test_auc" in logs and ("[mlplat] job" in logs if backend == "local" else "Running entrypoint" in logs)


@pytest.mark.slow
def test_crashing_script_fails_with_its_traceback(backend, churn_ws, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    script = code / "crash.py"
    script.write_text("import sys\nprint('starting', flush=True)\nraise RuntimeError('the data is upside down')\n")
    rec = churn_ws.jobs.submit({"name": "crash", "entrypoint": str(script), "resources": {"processes_per_node": 1},
                                "retries": 1}, wait=True, timeout=300)
    assert rec.state == "failed" and rec.exit_code != 0 and rec.attempt == 2  # retried once, then failed
    assert "see `mlplat jobs logs" in rec.message
    full = run_cli("jobs", "logs", rec.id, check=0).stdout
    assert full.count("the data is upside down") >= 2, full  # both attempts' output is kept
    out = run_cli("jobs", "logs", rec.id, "--tail", "40", check=0).stdout
    assert "RuntimeError: the data is upside down" in out and "Traceback" in out
    st = run_cli("jobs", "status", rec.id, "--json", check=0).stdout
    assert '"state": "failed"' in st
    # what reproduces it: the script's hash, the environment that launched it (the folder is in no git repository)
    import hashlib
    import json
    repro = json.loads(st)["reproduce"]
    assert repro["git"] is None and repro["script"] == {"path": str(script), "sha256": hashlib.sha256(script.read_bytes()).hexdigest()}
    tags = churn_ws.mlflow_client().get_run(rec.mlflow_run_id).data.tags
    assert tags["mlplat.environment"] == f"python {repro['environment']['python']} sha256:{repro['environment']['hash']}"


@pytest.mark.slow
def test_cancel_ends_every_process(backend, churn_ws, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    script = code / "forever.py"
    # one write per line: both ranks start together under `python -u`, where print() would write word by word
    script.write_text("import os, sys, time\nsys.stdout.write(f'pid {os.getpid()} {os.getppid()}\\n')\nwhile True: time.sleep(0.5)\n")
    rec = churn_ws.jobs.submit({"name": "forever", "entrypoint": str(script), "resources": {"processes_per_node": 2}})
    deadline = time.time() + 180
    while time.time() < deadline and "".join(churn_ws.jobs.logs(rec.id)).count("pid ") < 2:
        time.sleep(0.5)
    found = [tuple(map(int, m)) for m in re.findall(r"^pid (\d+) (\d+)$", "".join(churn_ws.jobs.logs(rec.id)), re.M)]
    tree = [p for pair in found for p in pair]  # both workers and their deepspeed launcher
    if backend == "local":
        ref = churn_ws.jobs.get(rec.id).backend_ref
        tree += [ref["supervisor_pid"], ref["launcher_pgid"]]
    assert len(found) == 2 and all(psutil.pid_exists(p) for p in tree)
    assert churn_ws.jobs.status(rec.id).state == "running"
    out = run_cli("jobs", "cancel", rec.id, "--json", check=0).stdout
    assert '"state": "cancelled"' in out
    deadline = time.time() + 60
    alive = tree
    while alive and time.time() < deadline:
        time.sleep(0.5)
        alive = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"orphans: {alive}"
    assert churn_ws.jobs.status(rec.id).state == "cancelled"


def test_job_governance(churn_ws, churn_set, home):
    import mlplat
    spec = {"name": "nope", "entrypoint": str(TEMPLATE), "training_set": churn_set.id}
    with pytest.raises(PermissionDenied, match="may not jobs:submit"):
        mlplat.connect(home, user="someone").jobs.submit(spec)
    with pytest.raises(ResidencyViolation, match="eu-west-1"):
        churn_ws.jobs.submit({**spec, "region": "eu-west-1"})
    with pytest.raises(ResidencyViolation, match="eu-west-1"):  # a dry run is checked the same way
        churn_ws.jobs.submit({**spec, "region": "eu-west-1"}, dry_run=True)
    assert churn_ws.jobs.list() == []  # nothing was launched or recorded
    bad = run_cli("jobs", "submit", REPO / "README.md", check=1)
    assert "error:" in bad.stderr and "Traceback" not in bad.stderr


def test_local_dry_run_shows_the_command(churn_ws, churn_set):
    plan = run_cli("jobs", "submit", REPO / "templates" / "training" / "churn_job.yaml", "--dry-run", check=0).stdout
    assert "deepspeed" in plan and "MLPLAT_TRAINING_SET: churn@1" in plan and "train_tabular.py" in plan
    assert churn_ws.jobs.list() == []


def test_job_template_yaml_is_valid():
    from mlplat.jobs.spec import TrainingJob
    job = TrainingJob.from_yaml(REPO / "templates" / "training" / "churn_job.yaml")
    assert job.script_path() == TEMPLATE and job.deepspeed.zero_stage == 2 and job.resources.processes_per_node == 2
