"""What work costs (issue 19, first increment): a real 2-process DeepSpeed job and a pipeline step burning CPU in a
child process are measured, with CPU-seconds checked against an independent figure read from /proc; the use is
priced, attributed to whoever asked (and their team), reported by user and pipeline, and reading someone else's
spend without `cost:read` is refused."""
import json
import os
import threading
import time
from pathlib import Path

import pytest

from helpers import run_cli, write_notebook, write_pipeline
from mlplat.errors import PermissionDenied

TICK = os.sysconf("SC_CLK_TCK")

# A real DeepSpeed job: two ranks on gloo (ZeRO-1), a small MLP trained for a fixed number of steps.
DS_SCRIPT = """
import os, sys, time, torch, deepspeed
deepspeed.init_distributed(dist_backend="gloo")
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                                  config={"train_micro_batch_size_per_gpu": 32, "zero_optimization": {"stage": 1}, "zero_allow_untested_optimizer": True})
for steps in range(int(sys.argv[-1])):   # the same number on every rank (the launcher puts --local_rank=N first)
    loss = engine(torch.randn(32, 64)).pow(2).mean(); engine.backward(loss); engine.step()
# one write: `deepspeed` runs ranks with `python -u`, where print() writes each word on its own, and two ranks ending
# together would interleave their words in the shared log
sys.stdout.write(f"rank {os.environ['RANK']} steps {steps + 1} cpu {time.process_time()}\\n")
"""


class ProcWatch:
    """The independent figure: every 50 ms, read /proc/<pid>/stat of every process on the machine and keep, for each
    (pid, start time), its parent and its own utime+stime. Afterwards the CPU time of a tree is the sum over the
    processes that descended from its root: nothing of mlplat's measuring (rusage, psutil) is used."""
    def __init__(self):
        self.seen, self.stop = {}, threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self.stop.is_set():
            for d in os.listdir("/proc"):
                if not d.isdigit(): continue
                try:
                    with open(f"/proc/{d}/stat") as f: rest = f.read().rsplit(")", 1)[1].split()
                except OSError: continue
                # after the name: state ppid ... utime(14th field) stime(15th) ... starttime(22nd)
                self.seen[(int(d), rest[19])] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / TICK)
            time.sleep(0.05)

    def __enter__(self): self.thread.start(); return self
    def __exit__(self, *exc): self.stop.set(); self.thread.join()

    def tree_cpu(self, is_root) -> float:
        "CPU seconds of every process descending from a process for which `is_root(pid)` holds (roots excluded)."
        parent = {pid: ppid for (pid, _), (ppid, _) in self.seen.items()}
        def under(pid, hops=0):
            p = parent.get(pid)
            return p is not None and hops < 64 and (is_root(p) or under(p, hops + 1))
        return sum(cpu for (pid, _), (_, cpu) in self.seen.items() if under(pid))


@pytest.fixture
def teams_ws(home):
    "A workspace where bo is admin, ada a data scientist in team vision, and cpu costs 3.6 an hour (0.001 a second)."
    home.mkdir(parents=True)
    (home / "mlplat.toml").write_text('[rbac.bindings]\nbo = ["admin"]\nada = ["data-scientist"]\n'
                                      '[rbac.teams]\nada = "vision"\n[cost]\ncurrency = "AED"\ncpu_hour = 3.6\n')
    import mlplat
    return mlplat.connect(home, user="bo")


@pytest.mark.slow
def test_deepspeed_job_is_measured_priced_and_attributed(teams_ws, tmp_path):
    ada = teams_ws.as_user("ada")
    script = tmp_path / "burn_ds.py"
    script.write_text(DS_SCRIPT)
    with ProcWatch() as watch:
        rec = ada.jobs.submit({"name": "ds-burn", "entrypoint": str(script), "args": ["1200"], "experiment": "cost-exp",
                               "resources": {"processes_per_node": 2}, "timeout": "10m"})
        done = ada.jobs.wait(rec.id, timeout=400)
        supervisor = done.backend_ref["supervisor_pid"]
    log = "".join(ada.jobs.logs(rec.id))
    assert done.state == "succeeded", log
    assert log.count(" steps ") == 2   # both ranks trained
    [row] = teams_ws.cost.records(kind="job")
    proc_says = watch.tree_cpu(lambda pid: pid == supervisor)
    print(f"job: measured {row['cpu_seconds']} CPU-s, /proc {proc_says:.2f} CPU-s, wall {row['wall_seconds']} s")
    assert row["subject"] == rec.id and row["attempt"] == 1 and row["source"] == "process-tree"
    assert row["cpu_seconds"] >= 12 and abs(row["cpu_seconds"] - proc_says) <= 0.2 * proc_says, (row, proc_says)
    assert row["usage"]["cpu_from"] in ("rusage", "rusage+live") and row["memory_peak_mb"] > 200
    assert 0 < row["wall_seconds"] and row["memory_gb_seconds"] > 0
    # priced with [cost] (cpu 0.001 a second, memory 0.005 a GB-hour) and attributed to ada and her team
    expected = row["cpu_seconds"] * 0.001 + row["memory_gb_seconds"] / 3600 * 0.005
    assert row["cost"] == pytest.approx(expected, rel=1e-4) and row["currency"] == "AED"
    assert (row["principal"], row["team"], row["experiment"]) == ("ada", "vision", "cost-exp")
    # the job's own record carries it (the CLI, the REST API and the Lab's job list all read it from there)
    assert ada.jobs.status(rec.id).cost["cost"] == pytest.approx(row["cost"], abs=1e-6)
    assert [j.cost["cost"] for j in teams_ws.jobs.list() if j.id == rec.id] == [pytest.approx(row["cost"], abs=1e-6)]
    tags = teams_ws.mlflow_client().get_run(rec.mlflow_run_id).data.tags
    assert float(tags["mlplat.cost"]) == pytest.approx(row["cost"], abs=1e-6) and tags["mlplat.cost_currency"] == "AED"


def _my_forkserver(pid) -> bool:
    "Whether `pid` is the forkserver this test process started (other tests on the machine have theirs)."
    try:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        return ppid == os.getpid() and "forkserver" in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError: return False


@pytest.mark.slow
def test_pipeline_step_is_measured_and_reported(teams_ws, tmp_path):
    burn = ("import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'import sys, time\\nt = time.process_time()\\n"
            "while time.process_time() - t < float(sys.argv[1]): pass', str(seconds)], check=True)")
    write_notebook(tmp_path / "burn.ipynb", "seconds = 1.0", burn)
    spec = write_pipeline(tmp_path, {"name": "burner", "steps": [{"name": "burn", "notebook": "burn.ipynb",
                                                                  "parameters": {"seconds": 5.0}}]})
    ada = teams_ws.as_user("ada")
    with ProcWatch() as watch:
        run = ada.pipelines.run(spec)
    assert run.status == "succeeded", run.steps["burn"].error
    proc_says = watch.tree_cpu(_my_forkserver)   # the step's process, its kernel and the burner: the forkserver's tree
    [row] = teams_ws.cost.records(kind="pipeline_step")
    print(f"step: measured {row['cpu_seconds']} CPU-s, /proc {proc_says:.2f} CPU-s, wall {row['wall_seconds']} s")
    assert (row["subject"], row["step"], row["pipeline"], row["principal"], row["team"]) == (run.id, "burn", "burner", "ada", "vision")
    assert row["cpu_seconds"] >= 5 and abs(row["cpu_seconds"] - proc_says) <= 0.2 * proc_says, (row, proc_says)
    assert not list(Path(run.folder).glob(".*.json"))   # recorded, then removed
    # reports: by pipeline and by user, through the API and the CLI
    [by_pipeline] = teams_ws.cost.report("pipeline")
    assert (by_pipeline["pipeline"], by_pipeline["records"], by_pipeline["cost"]) == ("burner", 1, row["cost"])
    record_other_work(teams_ws)
    by_user = {r["user"]: r for r in teams_ws.cost.report("user", since="1d")}
    assert set(by_user) == {"ada", "bo"} and by_user["bo"]["cost"] == pytest.approx(0.1)
    shown = json.loads(run_cli("cost", "report", "--by", "user", "--json", "--user", "bo", check=0).stdout)
    assert [r["user"] for r in shown] == ["bo", "ada"]
    csv = run_cli("cost", "report", "--by", "pipeline", "--csv", "--user", "bo", check=0).stdout.splitlines()
    assert csv[0].startswith("pipeline,records,") and csv[1].startswith("burner,1,")
    # ada reads her own spend; bo's is refused (and says which permission would allow it)
    assert [r["user"] for r in ada.cost.report("user")] == ["ada"]
    with pytest.raises(PermissionDenied, match="cost:read"): ada.cost.report("user", user="bo")
    refused = run_cli("cost", "report", "--principal", "bo", "--user", "ada", check=None)
    assert refused.returncode != 0 and "cost:read" in refused.stderr


def record_other_work(ws):
    "Bo's own job attempt (100 CPU-seconds), recorded as the supervisor would."
    from mlplat.cost.core import Attribution, record_usage
    from mlplat.cost.usage import Usage
    record_usage(ws, Usage(wall_seconds=60, cpu_seconds=100), Attribution("job", "other-1", "bo", 1))


def test_user_without_any_cost_permission_is_refused(teams_ws):
    outsider = teams_ws.as_user("eve")   # bound to nothing
    with pytest.raises(PermissionDenied, match="cost:read_own"): outsider.cost.report("user")


@pytest.mark.services
def test_a_server_records_its_replica_time_and_cost_per_1000_predictions(ws, tmp_path):
    """`mlplat serve` measures itself: when it stops, the window since it started is one usage record per served name,
    with the requests it answered, so a deployment's report gives its replica-hours and cost per 1,000 predictions."""
    import httpx
    from helpers import BIN, X, free_port, register_version, start_process, stop_process, wait_http
    ws.models.promote("risk", register_version(ws, 1.0).version, "champion")
    port, log = free_port(), tmp_path / "serve.log"
    p = start_process([BIN / "mlplat", "serve", "--port", port, "--refresh", "0", "--auth", "off",
                       "--model", "risk=models:/risk@champion"], log)
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", p, log)
        body = {"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "data": X[:3].ravel().tolist()}]}
        for _ in range(5):
            assert httpx.post(f"http://127.0.0.1:{port}/v2/models/risk/infer", json=body).status_code == 200
    finally:
        stop_process(p)                                   # SIGTERM: the server's shutdown records its last window
    [row] = ws.cost.report("deployment")
    assert (row["deployment"], row["records"], row["predictions"]) == ("risk", 1, 5), row
    assert row["replica_hours"] > 0 and row["cpu_seconds"] > 0 and row["cost"] > 0
    assert row["cost_per_1000_predictions"] == pytest.approx(row["cost"] / 5 * 1000, rel=1e-3)
    [rec] = ws.cost.records(kind="deployment")
    assert rec["principal"] == ws.principal.name and rec["source"] == "serving-process" and rec["usage"]["predictions"] == 5
    out = run_cli("cost", "report", "--by", "deployment", "--csv", check=0).stdout
    assert out.splitlines()[0].endswith("replica_hours,predictions,cost_per_1000_predictions") and "risk," in out
