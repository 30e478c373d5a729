"""templates/training/train_lm.py: the GPT model is what it claims, and the tiny config trains as a real 2-process
DeepSpeed ZeRO-2 job on CPU, reporting tokens/s to the job's MLflow run."""
import importlib.util

import pytest

from helpers import REPO

LM = REPO / "templates" / "training" / "train_lm.py"


@pytest.fixture(scope="module")
def lm():
    spec = importlib.util.spec_from_file_location("train_lm", LM)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpt2_preset_is_gpt2_small(lm):
    import torch
    n_layer, n_head, d, seq_len, vocab = lm.PRESETS["gpt2-124m"]
    with torch.device("meta"):
        model = lm.GPT(n_layer, n_head, d, seq_len, vocab)
    n = sum(p.numel() for p in model.parameters())
    assert 124.0e6 < n < 124.6e6  # GPT-2 small with the vocabulary padded to 50304, lm_head tied
    assert model.lm_head.weight is model.wte.weight and vocab % 64 == 0
    assert lm.flops_per_token(model, n_layer, d, seq_len) == 6 * (n - seq_len * d) + 12 * n_layer * d * seq_len


def test_attention_is_causal(lm):
    import torch
    torch.manual_seed(0)
    block = lm.Block(32, 4, 2)
    x = torch.randn(1, 10, 32)
    y = block(x)
    x2 = x.clone()
    x2[:, 6:] = torch.randn(1, 4, 32)  # changing the future must not change the past
    assert torch.allclose(block(x2)[:, :6], y[:, :6], atol=1e-6) and not torch.allclose(block(x2)[:, 6:], y[:, 6:])


@pytest.mark.slow
def test_tiny_lm_trains_as_a_deepspeed_job(ws):
    rec = ws.jobs.submit({"name": "lm-tiny", "entrypoint": str(LM), "args": ["--preset", "tiny", "--steps", "40"],
                          "experiment": "lm", "deepspeed": {"zero_stage": 2, "micro_batch_size": 8},
                          "resources": {"processes_per_node": 2}, "timeout": "10m"}, wait=True, timeout=400)
    log = "".join(ws.jobs.logs(rec.id))
    assert rec.state == "succeeded", log
    run = ws.mlflow_client().get_run(rec.mlflow_run_id).data
    assert run.params["zero_stage"] == "2" and run.params["world_size"] == "2" and run.params["precision"] == "fp32"
    assert run.metrics["tokens_per_s"] > 0 and "mfu" not in run.metrics  # no peak FLOPS to divide by on a CPU
    history = ws.mlflow_client().get_metric_history(rec.mlflow_run_id, "loss")
    first, last = history[0].value, history[-1].value
    assert last < first - 0.5, (first, last)
    assert "tokens/s" in log and "MFU n/a" in log


def test_lm_job_template_is_valid():
    from mlplat.jobs.spec import TrainingJob
    job = TrainingJob.from_yaml(REPO / "templates" / "training" / "lm_job.yaml")
    assert job.script_path() == LM and job.deepspeed.zero_stage == 2 and job.resources.processes_per_node == "auto"
