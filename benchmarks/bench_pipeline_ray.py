"""Pipeline steps on Ray (`backend: ray`) against local steps, and one Ray node against two, in one run.

1. Overhead per step: a linear pipeline of 4 trivial steps (a parameters cell and one output), run with
   `backend: local` and `backend: ray` on a one-node Ray cluster, alternating, round 0 a warm-up and discarded.
   Overhead per step on Ray = (ray - local) / 4. Where a Ray step's time goes is read from its log: from submission
   to papermill's first line (Ray scheduling, the runtime env, `python -m` and papermill's import), the kernel's start,
   the cells, and from the last cell to the step being recorded (the poll, the log copy).
2. Spreading: 4 independent steps that each reserve one CPU (`resources: {cpu: 1}`) and sleep 10 s, with
   max_parallel 4, on one node (`--num-cpus 2`: two steps at a time) and on two nodes (the same head plus a worker node
   joined with `ray start --address`, `--num-cpus 2` each: four at a time). The machine has 2 cores; the steps sleep
   rather than compute so that the figure measures placement over the cluster's reserved CPUs and not 2 cores shared
   by 4 busy loops. The nodes each step ran on are read from Ray's job records.

Every Ray process is started here in its own session (`ray start --block`) and ended by its process group; `ray stop`
is never used (it would end every Ray of the machine). Writes benchmarks/.work/pipeline_ray.json; the figures go to
benchmarks/RESULTS.md by hand.
"""
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work" / "pipeline_ray"
BIN = Path(sys.executable).parent
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 2))
STEPS, SLEEP_S = 4, 10


def notebook(path: Path, params: str, body: str):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, str(path))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    "A Ray head (and worker nodes) on this machine, each `ray start --block` in a session of its own."
    def __init__(self):
        self.procs, self.gcs, self.dash = [], free_port(), free_port()
        self.temp = Path(f"/tmp/mlplat-bench-ray-{os.getpid()}")   # short: Ray's socket paths must stay under 107 bytes
        self.env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
        self.address = f"http://127.0.0.1:{self.dash}"

    def node(self, name: str, *args):
        ports = ["--node-manager-port", free_port(), "--object-manager-port", free_port(), "--metrics-export-port", free_port(),
                 "--dashboard-agent-listen-port", free_port(), "--dashboard-agent-grpc-port", free_port(),
                 "--runtime-env-agent-port", free_port()]
        log = open(WORK / f"ray-{name}.log", "ab")
        cmd = [str(BIN / "ray"), "start", "--block", "--num-cpus", "2", "--object-store-memory", str(200 * 2**20),
               "--node-ip-address", "127.0.0.1", "--disable-usage-stats", *map(str, [*ports, *args])]
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True, cwd=WORK))

    def head(self):
        self.node("head", "--head", "--port", self.gcs, "--dashboard-host", "127.0.0.1", "--dashboard-port", self.dash,
                  "--include-dashboard", "true", "--temp-dir", self.temp, "--min-worker-port", "20000", "--max-worker-port", "20999")
        self.wait_nodes(1)

    def worker(self):
        self.node("worker", "--address", f"127.0.0.1:{self.gcs}", "--min-worker-port", "21000", "--max-worker-port", "21999")
        self.wait_nodes(2)

    def wait_nodes(self, n: int, patience: float = 240):
        "Until `n` nodes are alive and a no-op job runs (a fresh job agent answers 'No available agent' for a while)."
        from ray.job_submission import JobSubmissionClient
        from ray.util.state import list_nodes
        end = time.monotonic() + patience
        while True:
            assert all(p.poll() is None for p in self.procs), f"a Ray node exited; see {WORK}/ray-*.log"
            try:
                if len(list_nodes(self.address, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)) >= n:
                    client = JobSubmissionClient(self.address)
                    sid = client.submit_job(entrypoint="true")
                    while str(client.get_job_status(sid).value) not in ("SUCCEEDED", "FAILED", "STOPPED"):
                        time.sleep(0.5)
                    return
            except Exception as e:
                if time.monotonic() > end:
                    raise RuntimeError(f"Ray cluster not ready after {patience} s: {e}") from None
            time.sleep(1)

    def stop(self):
        for p in reversed(self.procs):                 # workers first, then the head
            try: os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError: pass
        for p in reversed(self.procs):
            try: p.wait(30)
            except subprocess.TimeoutExpired: pass
            try: os.killpg(p.pid, signal.SIGKILL)     # what is left in the group
            except ProcessLookupError: pass
            p.wait()
        shutil.rmtree(self.temp, ignore_errors=True)


STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO (.*)$")


def phases(log: Path) -> dict:
    "Seconds from submission (the header line) to papermill's first line, the kernel's start and the last cell's end."
    text = log.read_text()
    header = re.search(r"^--- (\S+) ray job ", text, re.M)
    t0 = datetime.fromisoformat(header[1]).replace(tzinfo=None)
    marks = {}
    for line in text.splitlines():
        m = STAMP.match(line)
        if not m: continue
        t = (datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f") - t0).total_seconds()
        if m[2].startswith("mlplat step entrypoint started"): marks.setdefault("entrypoint_started", t)
        elif m[2].startswith("Input Notebook"): marks.setdefault("papermill_started", t)
        elif m[2].startswith("Executing notebook with kernel"): marks.setdefault("kernel_ready", t)
        elif m[2].startswith("Ending Cell"): marks["last_cell_done"] = t
    return marks


def run(ws, spec: dict) -> tuple[float, object]:
    t = time.perf_counter()
    rec = ws.pipelines.run(spec)
    took = time.perf_counter() - t
    assert rec.status == "succeeded", {n: s.error for n, s in rec.steps.items()}
    return took, rec


def overhead(ws) -> dict:
    chain = lambda backend: {"name": f"chain-{backend}", "backend": backend, "max_parallel": 1,
                             "steps": [{"name": f"s{i}", "notebook": str(WORK / "trivial.ipynb"), "parameters": {"n": i},
                                        **({"depends_on": [f"s{i - 1}"]} if i else {})} for i in range(STEPS)]}
    times, breakdown = {"local": [], "ray": []}, []
    for r in range(ROUNDS + 1):
        for backend in ("local", "ray"):
            took, rec = run(ws, chain(backend))
            print(f"round {r} {STEPS} trivial steps in a chain, {backend:5s} {took:6.2f} s", flush=True)
            if not r: continue
            times[backend].append(took)
            if backend == "ray":
                for s in rec.steps.values():
                    p = phases(Path(rec.folder) / f"{s.name}.log")
                    p["recorded"] = (s.finished_at - s.started_at).total_seconds()
                    breakdown.append(p)
    med = {k: statistics.median(v) for k, v in times.items()}
    phase = {k: round(statistics.median(b[k] for b in breakdown), 2) for k in breakdown[0]}
    out = {"rounds": times, "median_s": med, "per_step_s": {k: v / STEPS for k, v in med.items()},
           "overhead_per_step_s": (med["ray"] - med["local"]) / STEPS, "ray_step_phases_median_s": phase}
    print(json.dumps(out, indent=1), flush=True)
    return out


def spread(ws, cluster, label: str) -> dict:
    from ray.job_submission import JobSubmissionClient
    fan = {"name": f"fan-{label.replace(' ', '-')}", "backend": "ray", "max_parallel": STEPS, "resources": {"cpu": 1},
           "steps": [{"name": f"w{i}", "notebook": str(WORK / "sleep.ipynb")} for i in range(STEPS)]}
    took, rec = run(ws, fan)
    jobs = [j for j in JobSubmissionClient(cluster.address).list_jobs() if (j.metadata or {}).get("mlplat.run") == rec.id]
    nodes = sorted({j.driver_node_id for j in jobs})
    per_node = {f"node{nodes.index(n) + 1}": sum(j.driver_node_id == n for j in jobs) for n in nodes}
    out = {"wall_s": took, "steps_per_node": per_node}
    print(f"{STEPS} independent steps (cpu: 1, sleep {SLEEP_S} s) on {label}: {took:.2f} s, steps per node {per_node}", flush=True)
    return out


def main():
    from mlplat.workspace import init
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    ws = init(WORK / "ws", quiet=True)
    notebook(WORK / "trivial.ipynb", "n = 0", "import mlplat.pipelines as pl\npl.output('n', n)")
    notebook(WORK / "sleep.ipynb", f"seconds = {SLEEP_S}", "import time\ntime.sleep(seconds)")
    cluster = Cluster()
    results = {"machine": f"{os.cpu_count()} cores", "steps": STEPS, "sleep_s": SLEEP_S}
    try:
        t = time.perf_counter(); cluster.head(); print(f"head ready in {time.perf_counter() - t:.1f} s", flush=True)
        ws.config.ray.address = cluster.address
        results["overhead"] = overhead(ws)
        results["one_node"] = spread(ws, cluster, "one node")
        t = time.perf_counter(); cluster.worker(); print(f"worker node ready in {time.perf_counter() - t:.1f} s", flush=True)
        results["two_nodes"] = spread(ws, cluster, "two nodes")
    finally:
        cluster.stop()
    results["speedup_two_nodes"] = results["one_node"]["wall_s"] / results["two_nodes"]["wall_s"]
    print(f"two nodes vs one: {results['speedup_two_nodes']:.2f}x", flush=True)
    (WORK.parent / "pipeline_ray.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
