"""Incremental re-run of the churn pipeline — target: re-running it with only the last step's parameter changed takes
<= 15 % of the full run's wall time, and `plan` names exactly that step.

On a fresh workspace: the churn pipeline (templates/pipelines/churn, the demo's defaults: 1,000 customers, 90 days,
6 + 4 epochs) runs in full; then `ws.pipelines.plan` with `fail_on_alert=true` (a parameter only the last step, monitor,
reads); then the re-run with that parameter. Wall time is `ws.pipelines.run` from call to return (validation, the
reproducibility record, every step, MLflow and audit included). One run each: the full run takes minutes.
Writes benchmarks/.work/pipeline_cache.json; the figures go to benchmarks/RESULTS.md by hand.
"""
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work" / "pipeline_cache"
SPEC = ROOT / "templates" / "pipelines" / "churn" / "pipeline.yaml"
PARAMS = {"customers": int(os.environ.get("BENCH_CUSTOMERS", 1000)), "days": int(os.environ.get("BENCH_DAYS", 90)),
          "epochs": int(os.environ.get("BENCH_EPOCHS", 6))}
PARAMS["challenger_epochs"] = max(1, PARAMS["epochs"] - 2)
TARGET = 0.15


def timed_run(ws, params: dict):
    t = time.perf_counter()
    rec = ws.pipelines.run(SPEC, params)
    wall = time.perf_counter() - t
    if rec.status != "succeeded":
        sys.exit(f"run {rec.id} {rec.status}: " + "; ".join(f"{n}: {s.error}" for n, s in rec.steps.items() if s.error))
    return rec, wall


def main():
    from mlplat.workspace import init
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    ws = init(WORK / "ws", quiet=True)
    full, full_s = timed_run(ws, PARAMS)
    print(f"full run {full.id}: {full_s:.1f} s", flush=True)
    changed = {**PARAMS, "fail_on_alert": True}
    t = time.perf_counter()
    plan = ws.pipelines.plan(SPEC, changed)
    plan_s = time.perf_counter() - t
    will_run = [e["step"] for e in plan if e["action"] == "run"]
    print(f"plan ({plan_s:.2f} s): runs {will_run}: " + "; ".join(r for e in plan for r in e["reasons"]), flush=True)
    again, again_s = timed_run(ws, changed)
    ran = [n for n, s in again.steps.items() if not s.cached_from]
    ratio = again_s / full_s
    print(f"re-run {again.id}: {again_s:.1f} s, ran {ran}; ratio {ratio:.3f} (target <= {TARGET}): "
          f"{'MET' if ratio <= TARGET and will_run == ran == ['monitor'] else 'NOT MET'}", flush=True)
    out = {"params": PARAMS, "full_s": round(full_s, 1), "rerun_s": round(again_s, 1), "ratio": round(ratio, 4), "target": TARGET,
           "plan_s": round(plan_s, 2), "plan_runs": will_run, "plan_reasons": {e["step"]: e["reasons"] for e in plan if e["reasons"]},
           "rerun_ran": ran, "full_steps_s": {n: s.seconds for n, s in full.steps.items()},
           "rerun_steps_s": {n: s.seconds for n, s in again.steps.items()}, "cpus": os.cpu_count()}
    (WORK.parent / "pipeline_cache.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {WORK.parent / 'pipeline_cache.json'}")


if __name__ == "__main__":
    sys.exit(main())
