"""Pipeline steps on a real local Ray head (`backend: ray`): outputs flow between steps that run as Ray jobs with their
resources reserved, parallel steps overlap, secrets and the delegated token stay out of what Ray shows, executed
notebooks and logs land in the run's folder; a cancel and a timeout stop the Ray job and the kernel; resume submits a
new Ray job; a run the cluster can never hold is refused before it starts."""
import json
import time
from pathlib import Path

import psutil
import pytest

from helpers import write_notebook
from mlplat.errors import ValidationError

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_agent(ray_address):
    """The test cluster once its job agent takes jobs: a fresh head on a busy machine answers "No available agent" for
    a while, which the backend waits out too, but a test's timings should not include it."""
    from ray.job_submission import JobSubmissionClient
    client, end = JobSubmissionClient(ray_address), time.monotonic() + 240
    while True:
        try:
            sid = client.submit_job(entrypoint="true")
            break
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > end:
                raise
            time.sleep(2)
    wait_for(lambda: str(client.get_job_status(sid).value) in ("SUCCEEDED", "FAILED", "STOPPED"), 120, "a no-op Ray job")
    return ray_address


@pytest.fixture
def ray_ws(home, ray_agent, monkeypatch):
    "A workspace whose `ray.address` is the test cluster's."
    import mlplat
    ray_address = ray_agent
    monkeypatch.setenv("MLPLAT_RAY_ADDRESS", ray_address)
    return mlplat.connect(home)


def ray_jobs(address: str, run_id: str) -> list:
    "The Ray jobs of a pipeline run, oldest first."
    from ray.job_submission import JobSubmissionClient
    jobs = [j for j in JobSubmissionClient(address).list_jobs() if (j.metadata or {}).get("mlplat.run") == run_id]
    return sorted(jobs, key=lambda j: j.start_time or 0)


def processes_of(run_id: str) -> list[psutil.Process]:
    "Live processes working for the run: the entrypoint (its spec file's name holds the run id) and the kernel (its environment)."
    found = []
    for p in psutil.process_iter():
        try:
            ours = p.environ().get("MLPLAT_PIPELINE_RUN") == run_id or run_id in " ".join(p.cmdline())
            if ours and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.25)
    return value


def test_steps_run_as_ray_jobs_with_outputs_secrets_and_notebooks(ray_ws, ray_address, tmp_path, monkeypatch):
    monkeypatch.setenv("WAREHOUSE_PASSWORD", "pw-on-the-runner-only")
    write_notebook(tmp_path / "source.ipynb", "n: int = 1", "import mlplat.pipelines as pl\npl.output('total', n * 2)")
    write_notebook(tmp_path / "use.ipynb", "x: int = 0\nlabel = ''",
                   "import os, time, mlplat\nimport mlplat.pipelines as pl\ntime.sleep(2)\n"
                   "print('password is', os.environ['DB_PASSWORD'])\n"
                   "pl.output('seen', f'{label}:{x}')\npl.output('who', mlplat.connect().principal.name)")
    rec = ray_ws.pipelines.run({
        "name": "onray", "backend": "ray", "parameters": {"n": 21}, "max_parallel": 2,
        "steps": [{"name": "source", "notebook": str(tmp_path / "source.ipynb"), "parameters": {"n": "{{ params.n }}"}},
                  *({"name": name, "notebook": str(tmp_path / "use.ipynb"), "depends_on": ["source"],
                     "secrets": {"DB_PASSWORD": "env:WAREHOUSE_PASSWORD"},
                     "parameters": {"x": "{{ steps.source.outputs.total }}", "label": name}} for name in ("b", "c"))]})
    assert rec.status == "succeeded", {n: s.error for n, s in rec.steps.items()}
    assert rec.steps["b"].outputs == {"seen": "b:42", "who": ray_ws.principal.name} and rec.steps["c"].outputs["seen"] == "c:42"
    folder = Path(rec.folder)
    assert sorted(p.name for p in folder.iterdir()) == ["b.ipynb", "b.log", "c.ipynb", "c.log", "source.ipynb", "source.log"]
    for name, s in rec.steps.items():
        assert s.backend == "ray" and Path(s.notebook) == folder / f"{name}.ipynb"
    spent = {r["step"]: r for r in ray_ws.cost.records(kind="pipeline_step")}     # one core reserved, for as long as it ran
    assert sorted(spent) == ["b", "c", "source"] and {r["source"] for r in spent.values()} == {"ray-requests"}
    assert spent["b"]["cpu_seconds"] == spent["b"]["wall_seconds"] > 2
    executed = ray_ws.pipelines.notebook(rec.id, "b").decode()      # sealed at rest: read through the workspace
    log = ray_ws.pipelines.step_log(rec.id, "b")["text"]
    assert "password is [secret DB_PASSWORD]" in executed and "pw-on-the-runner-only" not in executed + log
    assert "Running entrypoint for job onray-" in log and "Executing Cell 2" in log       # Ray's driver log, copied back
    jobs = {j.metadata["mlplat.step"]: j for j in ray_jobs(ray_address, rec.id)}
    assert sorted(jobs) == ["b", "c", "source"] and all(str(j.status.value) == "SUCCEEDED" for j in jobs.values())
    from ray.util.state import list_actors                                                # one core reserved per step
    supervisors = {a.name: a.required_resources for a in list_actors(ray_address, filters=[("class_name", "=", "JobSupervisor")], detail=True)}
    assert all(supervisors[f"_ray_internal_job_actor_{j.submission_id}"] == {"CPU": 1.0} for j in jobs.values()), supervisors
    b, c = jobs["b"], jobs["c"]
    assert b.start_time < c.end_time and c.start_time < b.end_time, "b and c did not run side by side"
    shown = json.dumps([j.dict() for j in jobs.values()], default=str)                     # what the dashboard shows
    assert "pw-on-the-runner-only" not in shown and "MLPLAT_TOKEN" not in shown
    assert not processes_of(rec.id)


def test_cancel_stops_the_ray_job_and_kernel_and_resume_submits_a_new_job(ray_ws, ray_address, tmp_path):
    flag = tmp_path / "hold"
    flag.write_text("")
    write_notebook(tmp_path / "hold.ipynb", f"flag = {str(flag)!r}",
                   "import os, time, mlplat.pipelines as pl\nwhile os.path.exists(flag): time.sleep(0.2)\npl.output('done', True)")
    rec = ray_ws.pipelines.start({"name": "held", "backend": "ray", "steps": [{"name": "s", "notebook": str(tmp_path / "hold.ipynb")}]})
    wait_for(lambda: [p for p in processes_of(rec.id) if "ipykernel" in " ".join(p.cmdline())], 90, "the step's kernel on Ray")
    first = ray_jobs(ray_address, rec.id)[0].submission_id
    done = ray_ws.pipelines.cancel(rec.id, "not now", wait=60)
    assert done.status == "cancelled" and done.steps["s"].error == "cancelled: not now; resume runs it again"
    assert [str(j.status.value) for j in ray_jobs(ray_address, rec.id)] == ["STOPPED"]
    wait_for(lambda: not processes_of(rec.id), 15, "the step's entrypoint and kernel to end")
    flag.unlink()
    again = ray_ws.pipelines.resume(rec.id)
    assert again.status == "succeeded" and again.steps["s"].outputs == {"done": True} and again.steps["s"].attempts == 2
    jobs = ray_jobs(ray_address, rec.id)
    assert [j.submission_id for j in jobs][0] == first and len({j.submission_id for j in jobs}) == 2
    assert [str(j.status.value) for j in jobs] == ["STOPPED", "SUCCEEDED"]


def test_timeout_and_failing_cell_fail_the_step_and_end_it_on_the_cluster(ray_ws, ray_address, tmp_path):
    write_notebook(tmp_path / "slow.ipynb", "seconds = 120", "import time\ntime.sleep(seconds)")
    write_notebook(tmp_path / "bad.ipynb", "n = 1", "assert n > 1, f'n is {n}'")
    t0 = time.monotonic()
    rec = ray_ws.pipelines.run({"name": "late", "backend": "ray", "max_parallel": 2, "steps": [
        {"name": "s", "notebook": str(tmp_path / "slow.ipynb"), "timeout": 3},
        {"name": "bad", "notebook": str(tmp_path / "bad.ipynb"), "retries": 1, "backoff": 0.1}]})
    s, bad = rec.steps["s"], rec.steps["bad"]
    assert rec.status == "failed" and s.error == "timed out after 3 s (the executed notebook shows how far it got)", s.error
    assert time.monotonic() - t0 < 120 and Path(s.notebook).is_file()
    assert (bad.status, bad.error, bad.attempts) == ("failed", "AssertionError: n is 1", 2)
    assert (tmp_path / "ws" / "pipelines" / rec.id / "bad.attempt-1.ipynb").is_file()
    jobs = {j.submission_id: j for j in ray_jobs(ray_address, rec.id)}           # each attempt its own Ray job
    assert sorted((j.metadata["mlplat.step"], j.metadata["mlplat.attempt"], str(j.status.value), j.driver_exit_code)
                  for j in jobs.values()) == [("bad", "1", "FAILED", 1), ("bad", "2", "FAILED", 1), ("s", "1", "FAILED", 124)]
    wait_for(lambda: not processes_of(rec.id), 15, "the timed-out step's kernel to end")


def test_a_run_the_cluster_can_never_hold_is_refused_before_it_starts(ray_ws, tmp_path, monkeypatch):
    write_notebook(tmp_path / "a.ipynb", "n = 1", "n")
    steps = [{"name": "big", "notebook": str(tmp_path / "a.ipynb"), "resources": {"cpu": 64}},
             {"name": "gpu", "notebook": str(tmp_path / "a.ipynb"), "resources": {"gpus": 1}},
             {"name": "fits", "notebook": str(tmp_path / "a.ipynb"), "resources": {"cpu": 2, "memory": "512Mi"}}]
    with pytest.raises(ValidationError) as e:
        ray_ws.pipelines.run({"name": "huge", "backend": "ray", "steps": steps})
    lines = e.value.message.splitlines()
    assert lines[0] == "pipeline huge cannot start:" and len(lines) == 3, e.value.message
    assert "step big asks for {'cpu': 64.0, 'memory': None, 'gpus': 0}, which no node of the Ray cluster" in lines[1]
    assert "step gpu asks for" in lines[2] and "(nodes: 2 CPU, 0 GPU," in lines[2]
    assert ray_ws.pipelines.list() == []
    monkeypatch.setattr(ray_ws.config.ray, "address", "http://127.0.0.1:9")
    with pytest.raises(ValidationError, match="step\\(s\\) big, gpu, fits run on Ray: cannot reach the Ray cluster at http://127.0.0.1:9"):
        ray_ws.pipelines.run({"name": "huge", "backend": "ray", "steps": steps})


def test_resume_after_the_runner_died_stops_the_job_it_left_running(ray_ws, ray_address, tmp_path):
    import subprocess
    from helpers import BIN, write_pipeline
    flag = tmp_path / "mode"
    flag.write_text("hold")                                  # the first kernel holds for ever; a later one reads "go"
    write_notebook(tmp_path / "hold.ipynb", f"flag = {str(flag)!r}",
                   "import time, mlplat.pipelines as pl\nhold = open(flag).read() == 'hold'\n"
                   "if hold: open(flag + '.held', 'w').close()\nwhile hold: time.sleep(0.2)\npl.output('done', True)")
    spec = write_pipeline(tmp_path, {"name": "orphan", "backend": "ray", "steps": [{"name": "s", "notebook": "hold.ipynb"}]})
    runner = subprocess.Popen([str(BIN / "mlplat"), "pipelines", "run", str(spec)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_id = wait_for(lambda: [r.id for r in ray_ws.pipelines.list()], 90, "the run's record")[0]
        wait_for(lambda: Path(f"{flag}.held").exists(), 90, "the step's kernel on Ray to hold")
    finally:
        runner.kill()                                        # the runner dies; its Ray job goes on
        runner.wait()
    assert [str(j.status.value) for j in ray_jobs(ray_address, run_id)] == ["RUNNING"]
    flag.write_text("go")
    rec = ray_ws.pipelines.resume(run_id)
    assert rec.status == "succeeded" and rec.steps["s"].outputs == {"done": True}, rec.steps["s"].error
    assert [str(j.status.value) for j in ray_jobs(ray_address, run_id)] == ["STOPPED", "SUCCEEDED"]
    assert "left running by an earlier runner" in ray_ws.pipelines.step_log(run_id, "s", tail=2**20)["text"]
    wait_for(lambda: not processes_of(run_id), 15, "the orphaned kernel to end")
