"""Pipelines of notebooks run by papermill in real kernels: outputs flow downstream, independent steps run in parallel,
a failing step is retried then fails and blocks only its dependents, resume finishes without redoing what succeeded,
parameter values never become code, and every run is recorded (DB, MLflow, lineage, audit)."""
import json
from datetime import datetime
from pathlib import Path

import nbformat
import pytest

from helpers import BIN, run_cli, write_notebook, write_pipeline


def times(rec, name):
    s = rec.steps[name]
    return s.started_at, s.finished_at


@pytest.mark.slow
def test_outputs_flow_downstream_and_independent_steps_run_in_parallel(ws, tmp_path):
    write_notebook(tmp_path / "source.ipynb", "n: int = 10", "import mlplat.pipelines as pl\npl.output('total', n * 2)")
    write_notebook(tmp_path / "slow.ipynb", "x = 0\nlabel = 'a'",
                   "import time, mlplat.pipelines as pl\ntime.sleep(4)\npl.output('seen', f'{label}:{x}')")
    write_notebook(tmp_path / "join.ipynb", "left = ''\nright = ''", "import mlplat.pipelines as pl\npl.output('both', [left, right])")
    spec = write_pipeline(tmp_path, {
        "name": "fanout", "parameters": {"n": 10}, "max_parallel": 2,
        "steps": [
            {"name": "source", "notebook": "source.ipynb", "parameters": {"n": "{{ params.n }}"}},
            {"name": "b", "notebook": "slow.ipynb", "depends_on": ["source"],
             "parameters": {"x": "{{ steps.source.outputs.total }}", "label": "b"}},
            {"name": "c", "notebook": "slow.ipynb", "depends_on": ["source"],
             "parameters": {"x": "{{ steps.source.outputs.total }}", "label": "c-{{ params.n }}"}},
            {"name": "join", "notebook": "join.ipynb", "depends_on": ["b", "c"],
             "parameters": {"left": "{{ steps.b.outputs.seen }}", "right": "{{ steps.c.outputs.seen }}"}}]})
    r = run_cli("pipelines", "run", spec, "-p", "n=21", "--json", check=0)
    rec = json.loads(r.stdout)
    assert rec["status"] == "succeeded", rec
    steps = {s["name"]: s for s in rec["steps"]}
    assert steps["source"]["outputs"] == {"total": 42}
    assert steps["join"]["outputs"] == {"both": ["b:42", "c-21:42"]}
    assert steps["c"]["parameters"] == {"x": 42, "label": "c-21"}
    for s in steps.values():
        assert s["status"] == "succeeded" and s["attempts"] == 1 and Path(s["notebook"]).is_file()
    # b and c ran side by side: each started before the other finished
    b0, b1 = (datetime.fromisoformat(steps["b"][k]) for k in ("started_at", "finished_at"))
    c0, c1 = (datetime.fromisoformat(steps["c"][k]) for k in ("started_at", "finished_at"))
    assert b0 < c1 and c0 < b1, steps
    # the record, MLflow, lineage and audit
    shown = json.loads(run_cli("pipelines", "show", rec["id"], "--json", check=0).stdout)
    assert shown["status"] == "succeeded" and [s["name"] for s in shown["steps"]] == ["source", "b", "c", "join"]
    assert rec["id"] in run_cli("pipelines", "list", check=0).stdout
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=ws.config.tracking_uri)
    run = client.get_run(rec["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["n"] == "21"
    assert sorted(a.path for a in client.list_artifacts(rec["mlflow_run_id"], "steps")) == \
        ["steps/b.ipynb", "steps/c.ipynb", "steps/join.ipynb", "steps/source.ipynb"]
    assert {f"pipeline_run:{rec['id']}", f"mlflow_run:{rec['mlflow_run_id']}"} <= set(ws.lineage.of("pipeline:fanout")["downstream_nodes"])
    audit = [e for e in ws.governance.audit.records() if e["action"] == "pipeline.run"]
    assert audit and audit[-1]["outcome"] == "success" and audit[-1]["resource"] == f"pipeline_run:{rec['id']}"


@pytest.mark.slow
def test_a_failing_step_is_retried_blocks_its_dependents_and_resume_finishes(ws, tmp_path):
    flag, counter = tmp_path / "fail-now", tmp_path / "executions.txt"
    flag.touch()
    count = f"open({str(counter)!r}, 'a').write(step + '\\n')"
    write_notebook(tmp_path / "ok.ipynb", "step = 'ok'", count, "import mlplat.pipelines as pl\npl.output('value', 7)")
    write_notebook(tmp_path / "flaky.ipynb", "step = 'flaky'\nvalue = 0", count,
                   f"import os\nif os.path.exists({str(flag)!r}): raise RuntimeError('injected failure')",
                   "import mlplat.pipelines as pl\npl.output('double', value * 2)")
    write_notebook(tmp_path / "after.ipynb", "step = 'after'\nx = 0", count)
    spec = write_pipeline(tmp_path, {
        "name": "flaky", "steps": [
            {"name": "ok", "notebook": "ok.ipynb", "parameters": {"step": "ok"}},
            {"name": "flaky", "notebook": "flaky.ipynb", "depends_on": ["ok"], "retries": 1, "backoff": 0.5,
             "parameters": {"step": "flaky", "value": "{{ steps.ok.outputs.value }}"}},
            {"name": "after", "notebook": "after.ipynb", "depends_on": ["flaky"],
             "parameters": {"step": "after", "x": "{{ steps.flaky.outputs.double }}"}}]})
    r = run_cli("pipelines", "run", spec, "--json", check=1)
    rec = json.loads(r.stdout)
    steps = {s["name"]: s for s in rec["steps"]}
    assert rec["status"] == "failed"
    assert steps["ok"]["status"] == "succeeded"
    assert steps["flaky"]["status"] == "failed" and steps["flaky"]["attempts"] == 2
    assert "RuntimeError: injected failure" in steps["flaky"]["error"]
    assert steps["after"]["status"] == "skipped" and "flaky did not succeed" in steps["after"]["error"]
    # the failed notebook is kept, with the failing cell's error in it; the first attempt too
    # (sealed at rest: the failed attempts too, opened with the workspace's keys)
    from mlplat.governance.crypto import is_sealed
    from mlplat.pipelines import notebook_bytes
    failed_nb = nbformat.reads(notebook_bytes(steps["flaky"]["notebook"], ws.crypto).decode(), as_version=4)
    assert any(o.get("ename") == "RuntimeError" for c in failed_nb.cells for o in c.get("outputs", []))
    assert (Path(rec["folder"]) / "flaky.attempt-1.ipynb").is_file()
    assert all(is_sealed(p) for p in Path(rec["folder"]).glob("*.ipynb")) and b"injected failure" not in Path(steps["flaky"]["notebook"]).read_bytes()
    assert counter.read_text().split() == ["ok", "flaky", "flaky"]
    text = run_cli("pipelines", "show", rec["id"], check=0).stdout
    assert "injected failure" in text and f"mlplat pipelines resume {rec['id']}" in text

    flag.unlink()
    again = json.loads(run_cli("pipelines", "resume", rec["id"], "--json", check=0).stdout)
    steps = {s["name"]: s for s in again["steps"]}
    assert again["status"] == "succeeded" and again["id"] == rec["id"]
    assert steps["flaky"]["outputs"] == {"double": 14} and steps["after"]["parameters"] == {"step": "after", "x": 14}
    assert counter.read_text().split() == ["ok", "flaky", "flaky", "flaky", "after"]  # ok was not run again
    assert steps["ok"]["attempts"] == 1
    run_cli("pipelines", "resume", rec["id"], check=1)  # a succeeded run has nothing to resume


@pytest.mark.slow
def test_parameter_values_are_data_never_code(ws, tmp_path):
    pwned = tmp_path / "pwned"
    nasty = [f'"; open({str(pwned)!r}, "w").write("x"); "', f"\\\"; open({str(pwned)!r}, 'w'); #",
             f"'''\nopen({str(pwned)!r}, 'w')\n'''", "line1\nline2\r\n\ttab \\ backslash {{ not a template }}", "ünïcødé ☃"]
    out = tmp_path / "seen.json"
    write_notebook(tmp_path / "echo.ipynb", "texts = []\nmapping = {}",
                   f"import json\njson.dump({{'texts': texts, 'mapping': mapping}}, open({str(out)!r}, 'w'))")
    spec = write_pipeline(tmp_path, {"name": "inject", "parameters": {"texts": {"type": "list", "default": []}},
                                     "steps": [{"name": "echo", "notebook": "echo.ipynb",
                                                "parameters": {"texts": "{{ params.texts }}", "mapping": {"k": nasty[0]}}}]})
    from mlplat.pipelines.spec import TEMPLATE
    assert TEMPLATE.search(nasty[3])  # a template-looking text inside a value is data too: it is not a reference...
    rec = ws.pipelines.run(spec, {"texts": nasty[:3] + nasty[4:]})
    assert rec.status == "succeeded", rec.steps["echo"].error
    seen = json.loads(out.read_text())
    assert seen == {"texts": nasty[:3] + nasty[4:], "mapping": {"k": nasty[0]}}
    assert not pwned.exists()
    # ...so it is refused when it is a step parameter, where templates are read
    bad = write_pipeline(tmp_path, {"name": "inject2", "steps": [{"name": "echo", "notebook": "echo.ipynb",
                                                                  "parameters": {"texts": [nasty[3]]}}]})
    r = run_cli("pipelines", "check", bad, check=1)
    assert "is not a reference" in r.stderr
    r = run_cli("pipelines", "run", spec, "-p", "texts=[1, 2]", "-p", "nope=1", check=1)
    assert "pipeline inject: unknown parameter(s) ['nope']" in r.stderr


def test_bad_pipelines_are_refused_before_anything_runs(ws, tmp_path):
    write_notebook(tmp_path / "a.ipynb", "n: int = 1  # how many\nrun_id = None  # required: the training run", "x = n")
    base = {"name": "bad", "steps": [{"name": "a", "notebook": "a.ipynb", "parameters": {"run_id": "r", "n": 2}}]}
    cases = [
        ({"parameters": {"run_id": "r", "n": "two"}}, "the notebook expects int"),
        ({"parameters": {"run_id": "r", "m": 1}}, "has no parameter 'm'"),
        ({"parameters": {"n": 2}}, "requires parameter(s) ['run_id']"),
        ({"depends_on": ["a"]}, "in a cycle"),
        ({"notebook": "missing.ipynb"}, "does not exist"),
        ({"notebook": "../a.ipynb"}, "is outside the pipeline's folder"),                 # path traversal
        ({"parameters": {"run_id": "r", "class": 1}}, "is not a Python identifier"),      # injected as code: `class = 1`
        ({"parameters": {"run_id": "r", "api_token": "s3cr3t"}}, "looks like a secret"),  # would be kept in the notebook
        ({"timeout": -1}, "timeout must be a number >= 1"),
        ({"region": "us-east-1"}, "must run in region us-east-1"),
    ]
    for change, message in cases:
        doc = {**base, "steps": [{**base["steps"][0], **change}]}
        r = run_cli("pipelines", "run", write_pipeline(tmp_path, doc), check=1)
        assert message in r.stderr, (change, r.stderr)
    r = run_cli("pipelines", "run", write_pipeline(tmp_path, base), "--max-parallel", "0", check=1)
    assert "max_parallel must be a whole number >= 1, got 0" in r.stderr, r.stderr
    assert json.loads(run_cli("pipelines", "list", "--json", check=0).stdout) == []  # nothing was recorded


@pytest.mark.slow
def test_a_step_past_its_timeout_is_stopped_with_its_kernel(ws, tmp_path):
    import psutil
    write_notebook(tmp_path / "hang.ipynb", "seconds = 600", "import os, time\nopen('kernel.pid', 'w').write(str(os.getpid()))\n"
                   "time.sleep(seconds)")
    spec = write_pipeline(tmp_path, {"name": "hang", "steps": [{"name": "hang", "notebook": "hang.ipynb", "timeout": 8}]})
    rec = ws.pipelines.run(spec)
    s = rec.steps["hang"]
    assert rec.status == "failed" and s.status == "failed" and "timed out after 8 s" in s.error
    assert s.seconds < 60, s.seconds
    kernel = int((tmp_path / "kernel.pid").read_text())
    assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
def test_ctrl_c_or_cancel_stops_the_running_steps_and_their_kernels_and_resume_finishes(ws, tmp_path, processes):
    import os
    import signal
    import subprocess
    import time

    import psutil
    flag = tmp_path / "hang-now"
    flag.touch()
    write_notebook(tmp_path / "slow.ipynb", "seconds = 600",
                   "import os, time\nopen(f'kernel-{os.getpid()}.pid', 'w').write('')\n"
                   f"while os.path.exists({str(flag)!r}) and seconds > 0: time.sleep(0.5); seconds -= 0.5")
    write_notebook(tmp_path / "after.ipynb", "x = 0", "y = x")
    spec = write_pipeline(tmp_path, {"name": "interrupt", "steps": [
        {"name": "slow", "notebook": "slow.ipynb"}, {"name": "after", "notebook": "after.ipynb", "depends_on": ["slow"]}]})
    p = subprocess.Popen([str(BIN / "mlplat"), "pipelines", "run", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    processes.append(p)
    end = time.time() + 120
    while not list(tmp_path.glob("kernel-*.pid")):
        assert p.poll() is None and time.time() < end, p.communicate()
        time.sleep(0.3)
    kernel = int(next(tmp_path.glob("kernel-*.pid")).stem.split("-")[1])
    os.kill(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted" in err, (p.returncode, err)
    time.sleep(1)
    assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE
    [rec] = ws.pipelines.list("interrupt")
    assert rec.status == "cancelled" and rec.steps["slow"].status == "failed" and "interrupted" in rec.steps["slow"].error
    assert rec.steps["after"].status == "pending"
    # resumed, then cancelled from another process: its runner stops the step and the kernel within seconds
    for f in tmp_path.glob("kernel-*.pid"): f.unlink()
    p = subprocess.Popen([str(BIN / "mlplat"), "pipelines", "resume", rec.id], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    processes.append(p)
    while not list(tmp_path.glob("kernel-*.pid")):
        assert p.poll() is None and time.time() < end + 120, p.communicate()
        time.sleep(0.3)
    kernel = int(next(tmp_path.glob("kernel-*.pid")).stem.split("-")[1])
    r = run_cli("pipelines", "cancel", rec.id, "--reason", "wrong data", "--wait", "60", "--json", check=0)
    cancelled = json.loads(r.stdout)
    assert cancelled["status"] == "cancelled" and "wrong data" in cancelled["steps"][0]["error"], cancelled
    assert p.wait(timeout=60) == 1
    time.sleep(1)
    assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE
    assert "is not running" in run_cli("pipelines", "cancel", rec.id, check=1).stderr
    assert any(e["action"] == "pipeline.cancel" and e["details"]["reason"] == "wrong data" for e in ws.governance.audit.records())
    flag.unlink()
    done = ws.pipelines.resume(rec.id)
    assert done.status == "succeeded", {n: s.error for n, s in done.steps.items()}
