"""GPT-style causal language model with DeepSpeed — throughput-minded, no downloads.

Random init, synthetic token streams generated on the device (no data loader in the way), so
the numbers measure the training step: tokens/s and MFU (model FLOPs utilization) are printed
and, under mlplat, logged to the job's MLflow run. What makes it fast on GPUs: bf16 (from the
DeepSpeed config), ZeRO-2, PyTorch SDPA (flash attention) with a fused QKV projection, weight
tying, fused AdamW, a vocabulary padded to a multiple of 64, TF32 for the rest, and
`engine.compile()` (`--compile`, on by default on GPUs).

    # GPU box, GPT-2 124M, T=1024, bf16, ZeRO-2:
    deepspeed --num_gpus 1 train_lm.py --preset gpt2-124m --micro-batch 64 --steps 60
    # CPU (what the tests run): 2 gloo processes, a tiny model
    deepspeed --num_gpus 2 train_lm.py --preset tiny --steps 40

As an mlplat job: `mlplat jobs submit templates/training/lm_job.yaml --wait`.

The data: each sequence repeats a random pattern (tokens drawn from a Zipf distribution).
The loss falls fast (token frequencies), then further once attention learns to copy the
pattern — a real learning signal that needs attention to work.
"""
import argparse
import json
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import deepspeed

from mlplat.jobs.runtime import context

PRESETS = {  # n_layer, n_head, d_model, seq_len, vocab
    "tiny": (2, 2, 64, 64, 256),
    "gpt2-124m": (12, 12, 768, 1024, 50304),   # GPT-2's 50257 padded to a multiple of 64
    "gpt2-350m": (24, 16, 1024, 1024, 50304),
}
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "H800": 989.4, "A100": 312.0, "A800": 312.0, "L40S": 362.1,
                    "L4": 121.0, "A10": 125.0}  # dense, per GPU; --peak-tflops overrides


class Block(nn.Module):
    def __init__(self, d, n_head, n_layer):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        for residual in (self.proj, self.out):  # GPT-2: scale residual projections by depth
            residual.scale_init = 0.02 / math.sqrt(2 * n_layer)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, n_layer, n_head, d, seq_len, vocab):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList(Block(d, n_head, n_layer) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=getattr(m, "scale_init", 0.02))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx, targets):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for b in self.blocks:
            x = b(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def flops_per_token(model, n_layer, d, seq_len):
    "6N for the matmuls (the tied lm_head counted once, position embeddings not) + causal-agnostic attention 12*L*d*T."
    n = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    return 6 * n + 12 * n_layer * d * seq_len


def peak_flops(device, override_tflops):
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_TFLOPS[key] * 1e12
    return None


def batches(vocab, seq_len, micro_batch, period, device, seed):
    "Endless (inputs, targets): per sequence a Zipf-distributed random pattern repeated to seq_len + 1 tokens."
    g = torch.Generator(device=device).manual_seed(seed)
    zipf = 1.0 / torch.arange(1, vocab + 1, device=device, dtype=torch.float32)
    while True:
        pattern = torch.multinomial(zipf.expand(micro_batch, vocab), period, replacement=True, generator=g)
        seq = pattern.repeat(1, (seq_len + 1) // period + 1)[:, : seq_len + 1]
        yield seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--micro-batch", type=int, help="per process (default: the DeepSpeed config's micro-batch)")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup", type=int, default=10, help="linear LR warmup steps")
    p.add_argument("--period", type=int, default=16, help="length of the repeated pattern in each sequence")
    p.add_argument("--timing-skip", type=int, help="steps left out of tokens/s (compilation, warm-up; default 5 or 10 compiled)")
    p.add_argument("--compile", dest="compile", action="store_true", default=None, help="engine.compile() (default: on GPUs)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOPS per GPU for MFU (default: known GPUs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", help="write this rank's figures to REPORT.rank<N>.json")
    p.add_argument("--local_rank", type=int, default=-1)  # passed by the deepspeed launcher
    args = p.parse_args()

    ctx = context()
    cuda = torch.cuda.is_available()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(ctx.local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    n_layer, n_head, d, seq_len, vocab = PRESETS[args.preset]

    model = GPT(n_layer, n_head, d, seq_len, vocab)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    ds_config = ctx.deepspeed_config({
        "train_micro_batch_size_per_gpu": args.micro_batch or (16 if cuda else 8), "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 2}, "bf16": {"enabled": cuda and torch.cuda.is_bf16_supported()},
        "gradient_clipping": 1.0, "zero_allow_untested_optimizer": True, "steps_per_print": 10**9})
    if args.micro_batch:
        ds_config["train_micro_batch_size_per_gpu"] = args.micro_batch
        ds_config.pop("train_batch_size", None)
    ds_config.setdefault("gradient_clipping", 1.0)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    if args.compile if args.compile is not None else cuda:
        engine.compile()
    micro = engine.train_micro_batch_size_per_gpu()
    accum = engine.gradient_accumulation_steps()
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    precision = "bf16" if ds_config.get("bf16", {}).get("enabled") else "fp16" if ds_config.get("fp16", {}).get("enabled") else "fp32"
    n_params = sum(p.numel() for p in model.parameters())
    fpt = flops_per_token(model, n_layer, d, seq_len)
    ctx.log_params({"preset": args.preset, "params": n_params, "n_layer": n_layer, "d_model": d, "seq_len": seq_len,
                    "vocab": vocab, "micro_batch": micro, "grad_accum": accum, "world_size": ctx.world_size,
                    "zero_stage": stage, "precision": precision, "compiled": bool(args.compile if args.compile is not None else cuda),
                    "steps": args.steps})

    data = batches(vocab, seq_len, micro, args.period, engine.device, args.seed * 1000 + ctx.rank)
    skip = args.timing_skip if args.timing_skip is not None else (10 if (args.compile if args.compile is not None else cuda) else 5)
    skip = min(skip, max(args.steps - 1, 0))
    losses, t0 = [], None
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(accum):
            x, y = next(data)
            loss = engine(x, y)
            engine.backward(loss)
            engine.step()
        if step == skip:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        if step % 10 == 0 or step == args.steps - 1:
            value = loss.item()
            losses.append((step, value))
            ctx.log_metrics({"loss": value}, step=step)
            if ctx.is_main:
                print(f"step {step:5d} loss {value:.4f} lr {lr:.2e}", flush=True)
    if cuda:
        torch.cuda.synchronize()
    timed_steps = args.steps - 1 - skip
    elapsed = time.perf_counter() - t0 if t0 is not None else float("nan")
    tokens_per_s = timed_steps * micro * accum * seq_len * ctx.world_size / elapsed if timed_steps > 0 else float("nan")
    peak = peak_flops(engine.device, args.peak_tflops)
    mfu = tokens_per_s * fpt / (peak * ctx.world_size) if peak else None
    figures = {"tokens_per_s": tokens_per_s, "mfu": mfu, "first_loss": losses[0][1], "final_loss": losses[-1][1],
               "params": n_params, "flops_per_token": fpt, "world_size": ctx.world_size, "precision": precision,
               "zero_stage": stage, "device": torch.cuda.get_device_name(engine.device) if cuda else "cpu"}
    ctx.log_metrics({k: v for k, v in figures.items() if k in ("tokens_per_s", "mfu", "final_loss") and v is not None},
                    step=args.steps)
    if args.report:
        with open(f"{args.report}.rank{ctx.rank}.json", "w") as fh:
            json.dump({"rank": ctx.rank, **figures}, fh)
    if ctx.is_main:
        shown = f"{mfu:.3f}" if mfu is not None else "n/a (no known peak for this device; --peak-tflops)"
        print(f"tokens/s {tokens_per_s:,.0f}  MFU {shown}  ({n_params / 1e6:.1f}M params, {precision}, ZeRO-{stage}, "
              f"{ctx.world_size} x {figures['device']})", flush=True)
        print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
