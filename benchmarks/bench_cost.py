"""Measurement overhead on a job's wall time (issue 19, target under 1 %).

The same 2-rank DeepSpeed job (the `deepspeed` launcher, two CPU ranks on gloo, ZeRO-1, a small MLP for STEPS
steps) is started ROUNDS times each way, interleaved, in this process:

* baseline: `Popen(...)` + `wait()`, what the local supervisor did before jobs were measured;
* measured: the same, reaped through `mlplat.cost.usage.ChildMeter` (subreaper, wait4 rusage, a psutil sample of the
  tree every second) and `finish()` — what the supervisor does now.

Figure = median(measured) / median(baseline) - 1. The machine is shared, so that ratio carries its noise; the cost
of one sample of the tree (timed directly, 200 times, against a live job) gives the deterministic part: per second
of job, one sample. Writes benchmarks/.work/cost.json. No assertions: the numbers are reported.
"""
import json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT/"benchmarks"/".work"/"cost.json"
ROUNDS, STEPS = int(os.environ.get("ROUNDS", 3)), int(os.environ.get("STEPS", 600))
SCRIPT = """
import os, sys, time, torch, deepspeed
deepspeed.init_distributed(dist_backend="gloo")
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), config={
    "train_micro_batch_size_per_gpu": 32, "zero_optimization": {"stage": 1}, "zero_allow_untested_optimizer": True})
for _ in range(int(sys.argv[-1])):
    loss = engine(torch.randn(32, 64)).pow(2).mean(); engine.backward(loss); engine.step()
"""


def command(script: Path) -> list:
    from mlplat.jobs.local import launch_command, release_shm
    return launch_command({"entrypoint": str(script), "args": [STEPS]}, 2)


def run(script: Path, measured: bool):
    from mlplat.cost.usage import ChildMeter
    from mlplat.jobs.local import release_shm
    cmd = command(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    if measured:
        m = ChildMeter(p, orphans=True)
        code, usage = m.wait(), m.finish()
    else: code, usage = p.wait(), None
    wall = time.perf_counter() - t
    release_shm(cmd)
    assert code == 0, f"the job failed ({code})"
    return wall, usage


def sample_cost(script: Path) -> float:
    "Seconds one sample of a live 2-rank job's tree takes (median of 200)."
    from mlplat.cost.usage import TreeSampler
    cmd = command(script)
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    time.sleep(8)   # the ranks are up
    s, times = TreeSampler(p.pid), []
    for _ in range(200):
        t = time.perf_counter(); s.sample(); times.append(time.perf_counter() - t)
    p.wait(); s.stop()
    from mlplat.jobs.local import release_shm
    release_shm(cmd)
    return statistics.median(times)


def main():
    from mlplat.cost.usage import become_subreaper
    become_subreaper()
    script = Path(tempfile.mkdtemp())/"ds_job.py"
    script.write_text(SCRIPT)
    run(script, False)   # warm-up: page cache, DeepSpeed's compiled CPU ops
    base, meas, usages = [], [], []
    for i in range(ROUNDS):
        for measured in ((False, True) if i % 2 == 0 else (True, False)):
            wall, u = run(script, measured)
            (meas if measured else base).append(wall)
            if u: usages.append(u.to_dict())
            print(f"round {i}: {'measured' if measured else 'baseline'} {wall:.2f} s", file=sys.stderr, flush=True)
    one = sample_cost(script)
    b, m = statistics.median(base), statistics.median(meas)
    res = {"rounds": ROUNDS, "steps": STEPS, "baseline_s": base, "measured_s": meas, "median_baseline_s": b,
           "median_measured_s": m, "overhead": m / b - 1, "sample_s": one, "sample_share_at_1s": one / 1.0,
           "usage": usages}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2))
    print(f"median wall: baseline {b:.2f} s, measured {m:.2f} s, overhead {100 * (m / b - 1):+.2f} %")
    print(f"one sample of the job's tree: {one * 1e3:.2f} ms (per 1 s interval: {100 * one:.2f} % of one core)")
    u = usages[-1]
    print(f"last measured attempt: wall {u['wall_seconds']} s, cpu {u['cpu_seconds']} s ({u['cpu_from']}), "
          f"peak {u['memory_peak_mb']} MB (max process {u['max_process_rss_mb']} MB), {u['samples']} samples")


if __name__ == "__main__":
    main()
