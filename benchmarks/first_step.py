"""A minimal DeepSpeed training script for bench_launch.py: initialize, take one step, stamp the time."""
import os
import time

import deepspeed
import torch

deepspeed.init_distributed(dist_backend="gloo")
model = torch.nn.Linear(16, 1)
engine, _, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.1),
                                       config={"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2},
                                               "steps_per_print": 10**9})
loss = engine(torch.randn(4, 16)).pow(2).mean()
engine.backward(loss)
engine.step()
if int(os.environ.get("RANK", 0)) == 0:
    with open(os.environ["BENCH_STAMP"], "w") as f:
        f.write(repr(time.time()))
