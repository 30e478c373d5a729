"""Pipeline overhead and parallel speed-up, in one run.

1. Overhead per step: the same 4 notebooks (each imports numpy, computes, records an output) run
   a) directly with papermill, in sequence, in one Python process (`papermill.execute_notebook`), and
   b) as a 4-step linear mlplat pipeline (`ws.pipelines.run`, max_parallel 1): validation, a process per step, DB
      records, MLflow artifacts, lineage and audit included.
   Overhead per step = (b - a) / 4. Variants alternate; round 0 is a warm-up and discarded.
2. Parallel speed-up: 4 independent steps that each wait 3 s (I/O-like work: a query, a remote job), run with
   max_parallel 1 and 4.
Writes benchmarks/.work/pipelines.json; the figures go to benchmarks/RESULTS.md by hand.
"""
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work" / "pipelines"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
STEPS = 4


def notebook(path: Path, params: str, body: str):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, str(path))


def main():
    import papermill as pm
    from mlplat.workspace import init
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    ws = init(WORK / "ws", quiet=True)
    work = "import numpy as np\nimport mlplat.pipelines as pl\npl.output('total', float(np.arange(n).sum()))"
    for i in range(STEPS):
        notebook(WORK / f"s{i}.ipynb", "n = 1000", work)
    notebook(WORK / "wait.ipynb", "seconds = 3.0", "import time\ntime.sleep(seconds)")
    chain = {"name": "chain", "max_parallel": 1,
             "steps": [{"name": f"s{i}", "notebook": f"s{i}.ipynb", "parameters": {"n": 1000 + i},
                        **({"depends_on": [f"s{i - 1}"]} if i else {})} for i in range(STEPS)]}
    (WORK / "chain.yaml").write_text(yaml.safe_dump(chain))
    fan = {"name": "fan", "steps": [{"name": f"w{i}", "notebook": "wait.ipynb"} for i in range(STEPS)]}
    (WORK / "fan.yaml").write_text(yaml.safe_dump(fan))

    def direct():
        for i in range(STEPS):
            pm.execute_notebook(str(WORK / f"s{i}.ipynb"), str(WORK / f"out-s{i}.ipynb"), parameters={"n": 1000 + i},
                                progress_bar=False, cwd=str(WORK))

    def mlplat_chain():
        rec = ws.pipelines.run(WORK / "chain.yaml")
        assert rec.status == "succeeded", {n: s.error for n, s in rec.steps.items()}

    times = {"papermill_direct": [], "mlplat_pipeline": []}
    for r in range(ROUNDS + 1):
        for name, fn in (("papermill_direct", direct), ("mlplat_pipeline", mlplat_chain)):
            t = time.perf_counter(); fn(); took = time.perf_counter() - t
            print(f"round {r} {name:18s} {took:6.2f} s", flush=True)
            if r: times[name].append(took)
    med = {k: statistics.median(v) for k, v in times.items()}
    overhead = (med["mlplat_pipeline"] - med["papermill_direct"]) / STEPS
    print(f"median: papermill {med['papermill_direct']:.2f} s, mlplat {med['mlplat_pipeline']:.2f} s; "
          f"overhead {overhead:.2f} s per step ({med['mlplat_pipeline'] / med['papermill_direct']:.2f}x)", flush=True)

    par = {}
    for mp in (1, STEPS):
        t = time.perf_counter(); rec = ws.pipelines.run(WORK / "fan.yaml", max_parallel=mp); par[mp] = time.perf_counter() - t
        assert rec.status == "succeeded"
        print(f"{STEPS} independent 3 s steps, max_parallel {mp}: {par[mp]:.2f} s", flush=True)
    speedup = par[1] / par[STEPS]
    print(f"parallel speed-up {speedup:.2f}x", flush=True)
    out = {"rounds": ROUNDS, "steps": STEPS, "times": times, "median": med, "overhead_per_step_s": overhead,
           "parallel_s": par, "parallel_speedup": speedup, "cpus": os.cpu_count()}
    (WORK.parent / "pipelines.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {WORK.parent / 'pipelines.json'}")


if __name__ == "__main__":
    sys.exit(main())
