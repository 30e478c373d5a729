"""Real DeepSpeed on CPU: the churn template trains with 2 gloo processes under ZeRO-1 and ZeRO-2,
both ranks end with identical parameters, and rank 0 logs params, metrics and the model to the job's MLflow run."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import BIN, REPO, TEMPLATE, free_port

pytestmark = pytest.mark.slow   # DeepSpeed launches


def _deepspeed(args, env, cwd):
    "The template under `deepspeed` on a free port; the ranks' shared-memory buffers are released afterwards."
    from mlplat.jobs.local import release_shm
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions"), "OMP_NUM_THREADS": "1", **env}
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), str(TEMPLATE), *args]
    try: p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    finally: release_shm(cmd)
    if p.returncode != 0:
        Path(cwd, "deepspeed.log").write_text(p.stdout + "\n----- stderr -----\n" + p.stderr)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _reports(prefix):
    reps = [json.loads(Path(f"{prefix}.rank{r}.json").read_text()) for r in (0, 1)]
    assert reps[0]["checksum"] == reps[1]["checksum"]  # ZeRO keeps the replicas identical
    return reps


def test_zero1_job_context_logs_to_mlflow_and_checkpoints(churn_ws, churn_set, home, tmp_path):
    from mlplat.jobs.spec import DeepSpeedSettings, Hardware
    cfg = DeepSpeedSettings(zero_stage=1, micro_batch_size=32).config(Hardware(0, False, 2), world_size=2)
    (tmp_path / "ds.json").write_text(json.dumps(cfg))
    client = churn_ws.mlflow_client()
    exp = client.get_experiment_by_name(churn_ws.config.workspace.project)
    run = client.create_run(exp.experiment_id, tags={"mlplat.training_set": churn_set.id})
    env = {"MLPLAT_HOME": str(home), "MLPLAT_TRAINING_SET": churn_set.id, "MLPLAT_MLFLOW_RUN_ID": run.info.run_id,
           "MLPLAT_DEEPSPEED_CONFIG": str(tmp_path / "ds.json"), "MLPLAT_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
           "MLPLAT_JOB_ID": "job-test"}
    _deepspeed(["--epochs", "4", "--report", str(tmp_path / "rep")], env, tmp_path)
    reps = _reports(tmp_path / "rep")
    assert reps[0]["auc"] > 0.65
    got = client.get_run(run.info.run_id).data
    assert got.params["zero_stage"] == "1" and got.params["world_size"] == "2"
    assert got.metrics["test_auc"] == pytest.approx(reps[0]["auc"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [0, 1, 2, 3]  # rank 0 only
    import mlflow
    mlflow.set_tracking_uri(churn_ws.config.tracking_uri)
    models = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
    assert [m.name for m in models if m.source_run_id == run.info.run_id] == ["model"]  # MLflow 3 logged model
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "step3"

    # a restarted job resumes after the last checkpoint instead of starting over
    _deepspeed(["--epochs", "5", "--report", str(tmp_path / "again")], env, tmp_path)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [0, 1, 2, 3, 4]
    data = client.get_run(run.info.run_id).data
    assert data.params["epochs"] == "4" and data.tags["mlplat.resume.epochs"] == "5"  # params are immutable in MLflow


def test_zero2_by_hand_without_mlplat(churn_set, tmp_path):
    churn_set.to_df().to_parquet(tmp_path / "churn.parquet")
    env = {k: "" for k in ("MLPLAT_HOME", "MLPLAT_TRAINING_SET", "MLPLAT_MLFLOW_RUN_ID", "MLPLAT_DEEPSPEED_CONFIG", "MLPLAT_CHECKPOINT_DIR")}
    p = _deepspeed(["--data", str(tmp_path / "churn.parquet"), "--epochs", "3", "--report", str(tmp_path / "rep")], env, tmp_path)
    reps = _reports(tmp_path / "rep")
    assert reps[0]["auc"] > 0.6 and '"test_auc"' in p.stdout
