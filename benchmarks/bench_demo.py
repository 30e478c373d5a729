"""`mlplat demo` wall time — the acceptance target is "finishes within 5 minutes on these 2-core machines once installed".

Runs `mlplat demo` (the churn pipeline with its defaults: 1,000 customers, 90 days, 6 + 4 epochs) on a fresh workspace,
then once more on the same workspace (the idempotent re-run: identical data and jobs are reused). Reports the wall time of
each, as the user sees it (process start to exit), and each step's seconds from the run record.
Writes benchmarks/.work/demo.json; the figures go to benchmarks/RESULTS.md by hand.
"""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work" / "demo"
MLPLAT = Path(sys.executable).parent / "mlplat"


def run(home: Path) -> dict:
    t = time.perf_counter()
    p = subprocess.run([str(MLPLAT), "demo", "--home", str(home), "--json"], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"mlplat demo failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rep = json.loads(p.stdout)
    return {"wall_seconds": round(wall, 1), "status": rep["run"]["status"], "run": rep["run"]["id"],
            "steps": {s["name"]: s["seconds"] for s in rep["run"]["steps"]}}


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    out = {"fresh": run(WORK / "ws"), "again": None}
    print("fresh workspace:", json.dumps(out["fresh"], indent=2), flush=True)
    out["again"] = run(WORK / "ws")
    print("re-run:", json.dumps(out["again"], indent=2), flush=True)
    (WORK.parent / "demo.json").write_text(json.dumps(out, indent=2))
    print(f"mlplat demo: {out['fresh']['wall_seconds']:.0f} s on a fresh workspace (target < 300 s), "
          f"{out['again']['wall_seconds']:.0f} s again")


if __name__ == "__main__":
    main()
