"""Churn MLP with DeepSpeed — a plain DeepSpeed/PyTorch training script.

Under mlplat (`mlplat jobs submit job.yaml`) it reads the job's training set, logs to the
job's MLflow run from rank 0, checkpoints and resumes. By hand it runs the same way:

    deepspeed --num_gpus 2 train_tabular.py --data churn.parquet        # CPU: 2 gloo processes

Features: every numeric column except the label and keys, one-hot encoded string columns,
missing values filled with 0 plus a "was missing" indicator (a customer with no recent
activity is informative, not noise). Standardized with the training split's statistics.
"""
import argparse
import json
import os

import numpy as np
import torch
import deepspeed

from mlplat.jobs.runtime import context

p = argparse.ArgumentParser()
p.add_argument("--data", help="parquet/CSV file (when not run as an mlplat job with a training set)")
p.add_argument("--label", default="churned")
p.add_argument("--drop", nargs="*", default=["customer_id", "event_timestamp"], help="columns that are not features")
p.add_argument("--epochs", type=int, default=8)
p.add_argument("--hidden", type=int, default=64)
p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--report", help="write this rank's summary (loss, AUC, parameter checksum) to REPORT.rank<N>.json")
p.add_argument("--local_rank", type=int, default=-1)  # passed by the deepspeed launcher
args = p.parse_args()

ctx = context()
deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
torch.manual_seed(args.seed)
np.random.seed(args.seed)

# ---- data: identical preprocessing on every rank, each rank trains on its own shard ----------
import pandas as pd
df = ctx.training_data(args.data)
y = df[args.label].to_numpy(dtype=np.float32)
X = df.drop(columns=[c for c in [args.label, *args.drop] if c in df.columns])
X = pd.get_dummies(X, columns=[c for c in X.columns if X[c].dtype == object], dummy_na=False, dtype=float)
for c in list(X.columns):
    if X[c].isna().any():
        X[c + "_missing"] = X[c].isna().astype(float)
X = X.fillna(0.0).astype(np.float32)
feature_names = list(X.columns)
X = X.to_numpy()
order = np.random.default_rng(args.seed).permutation(len(X))
cut = int(len(X) * 0.8)
train_idx, test_idx = order[:cut], order[cut:]
mean, std = X[train_idx].mean(0), X[train_idx].std(0) + 1e-6
X = (X - mean) / std
train = torch.utils.data.TensorDataset(torch.from_numpy(X[train_idx]), torch.from_numpy(y[train_idx]))

# ---- model + DeepSpeed -------------------------------------------------------------------------
model = torch.nn.Sequential(torch.nn.Linear(X.shape[1], args.hidden), torch.nn.ReLU(),
                            torch.nn.Linear(args.hidden, args.hidden), torch.nn.ReLU(), torch.nn.Linear(args.hidden, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
ds_config = ctx.deepspeed_config({"train_micro_batch_size_per_gpu": 64, "gradient_accumulation_steps": 1,
                                  "zero_optimization": {"stage": 2}, "steps_per_print": 10**9})
engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
sampler = torch.utils.data.distributed.DistributedSampler(train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=args.seed)
loader = torch.utils.data.DataLoader(train, batch_size=engine.train_micro_batch_size_per_gpu(), sampler=sampler, drop_last=True)
dtype = next(engine.module.parameters()).dtype
state = ctx.resume(engine)
start_epoch = state.get("epoch", -1) + 1
ctx.log_params({"epochs": args.epochs, "hidden": args.hidden, "lr": args.lr, "features": len(feature_names),
                "rows": len(df), "world_size": ctx.world_size, "zero_stage": ds_config["zero_optimization"]["stage"]})
loss_fn = torch.nn.BCEWithLogitsLoss()
step = 0
for epoch in range(start_epoch, args.epochs):
    sampler.set_epoch(epoch)
    total, n = 0.0, 0
    for xb, yb in loader:
        xb, yb = xb.to(engine.device, dtype), yb.to(engine.device, dtype)
        loss = loss_fn(engine(xb).squeeze(-1), yb)
        engine.backward(loss)
        engine.step()
        total, n, step = total + loss.item(), n + 1, step + 1
    ctx.log_metrics({"train_loss": total / max(n, 1)}, step=epoch)
    ctx.save_checkpoint(engine, epoch, epoch=epoch)

# ---- evaluation on the held-out split (same on every rank) --------------------------------------
from sklearn.metrics import roc_auc_score
engine.eval()
with torch.no_grad():
    logits = engine(torch.from_numpy(X[test_idx]).to(engine.device, dtype)).float().squeeze(-1).cpu().numpy()
auc = float(roc_auc_score(y[test_idx], logits)) if len(set(y[test_idx])) > 1 else float("nan")
ctx.log_metrics({"test_auc": auc}, step=args.epochs)
checksum = float(sum(p.detach().double().sum().item() for p in engine.module.parameters()))
if args.report:
    with open(f"{args.report}.rank{ctx.rank}.json", "w") as fh:
        json.dump({"rank": ctx.rank, "auc": auc, "checksum": checksum, "final_loss": total / max(n, 1), "features": feature_names}, fh)
if ctx.is_main:
    print(json.dumps({"test_auc": auc, "param_checksum": checksum}))
    ctx.log_model(engine.module.float().cpu(), input_example=X[test_idx][:5].astype(np.float32), name="model",
                  holdout=X[test_idx].astype(np.float32),  # the parity gate checks the ONNX export on these
                  feature_names=feature_names)
