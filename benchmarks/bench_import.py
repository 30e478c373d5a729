"""Import time of `import mlplat`, with `import feast` as the reference.

Method
------
Every sample is a fresh interpreter (`sys.executable -c ...`, run from the repository root with the
caller's environment, so `make bench` measures what `make` users get), timed from the parent with
`time.perf_counter()` around `subprocess.run`:

* baseline: `python -c "pass"`, N runs (interpreter start-up, site, .pth hooks);
* mlplat:   `python -c "import mlplat"`, N runs;
* feast:    `python -c "import feast"`, 3 runs (it takes seconds; it is the reference, not the target).

The three commands are interleaved (baseline, mlplat, feast?, baseline, mlplat, ...) so that noise on this
shared machine hits them alike. The figure reported for a package is
`median(python -c "import X") - median(python -c "pass")`. One warm-up run of each goes first and is
discarded (it fills the OS page cache). One extra run with `-X importtime` lists the slowest modules that
`import mlplat` loads, for diagnosis only.

Target (from the issue): import mlplat < 0.3 s, where import feast takes about 5 s.
Writes benchmarks/.work/import.json. No assertions: the numbers are reported, not enforced.
"""
import json, os, platform, statistics, subprocess, sys, time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT/"benchmarks"/".work"/"import.json"
RUNS, FEAST_RUNS, TARGET_S = 9, 3, 0.3


def code_version() -> str:
    "The commit measured, with '+dirty' when mlplat/ has uncommitted changes."
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+dirty" if git("status", "--porcelain", "mlplat") else "")


def run_once(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def importtime_top(module: str, n: int = 8) -> list:
    "Slowest modules (cumulative µs) in one `python -X importtime -c 'import module'` run."
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], cwd=ROOT,
                       check=True, capture_output=True, text=True)
    rows = []
    for line in r.stderr.splitlines():  # "import time:  self [us] | cumulative | module"
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit(): continue
        rows.append({"module": parts[2].strip(), "self_us": int(parts[0]), "cumulative_us": int(parts[1])})
    return {"modules_imported_incl_startup": len(rows), "top": sorted(rows, key=lambda r: -r["cumulative_us"])[:n]}


def main():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    codes = {"baseline": "pass", "mlplat": "import mlplat", "feast": "import feast"}
    for code in codes.values(): run_once(code)  # warm-up, discarded
    samples = {k: [] for k in codes}
    for i in range(RUNS):
        for k in ("baseline", "mlplat") + (("feast",) if i < FEAST_RUNS else ()):
            samples[k].append(run_once(codes[k]))
    med = {k: statistics.median(v) for k, v in samples.items()}
    net = {k: med[k] - med["baseline"] for k in ("mlplat", "feast")}
    result = {
        "benchmark": "import", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code": code_version(),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_1_5_15_at_end": os.getloadavg(),
                    "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", "")},
        "runs": {k: len(v) for k, v in samples.items()},
        "samples_s": {k: [round(x, 4) for x in v] for k, v in samples.items()},
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "import_s": {k: round(v, 4) for k, v in net.items()},  # median minus the interpreter baseline
        "target": {"import_mlplat_s_below": TARGET_S, "met": net["mlplat"] < TARGET_S},
        "mlplat_importtime": importtime_top("mlplat"),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")

    print(f"import time, fresh interpreters, {platform.python_version()}, nproc={os.cpu_count()}")
    print(f"{'command':<28}{'runs':>5}{'median s':>10}{'min s':>8}{'max s':>8}{'net s':>8}")
    for k in codes:
        v = samples[k]
        n = f"{net[k]:8.3f}" if k in net else f"{'':>8}"
        print(f"{'python -c ' + repr(codes[k]):<28}{len(v):>5}{med[k]:10.3f}{min(v):8.3f}{max(v):8.3f}{n}")
    print(f"import mlplat: {net['mlplat']:.3f} s (target < {TARGET_S} s: {'MET' if result['target']['met'] else 'MISSED'}); "
          f"import feast: {net['feast']:.2f} s; modules imported (incl. interpreter start-up): {result['mlplat_importtime']['modules_imported_incl_startup']}")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
