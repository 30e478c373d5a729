"""Schedules fired by real `mlplat scheduler` processes running real pipelines: two schedulers never fire a slot twice,
schedules survive a scheduler restart, overlap policies hold, and notifications reach a local webhook."""
import json
import signal
import subprocess
import time

import psutil
import pytest

from helpers import BIN, configure, run_cli, wait_for, write_notebook, write_pipeline


def scheduler(log, processes):
    "A `mlplat scheduler` process, appended to the test's `processes` (stopped at its end if it still runs)."
    p = subprocess.Popen([str(BIN / "mlplat"), "scheduler", "--tick", "0.5"], stdout=log, stderr=subprocess.STDOUT)
    processes.append(p)
    return p


def stop(p, timeout=90):
    p.send_signal(signal.SIGTERM)
    return p.wait(timeout=timeout)


@pytest.mark.services
@pytest.mark.slow
def test_two_schedulers_never_double_fire_and_schedules_survive_a_restart(ws, home, tmp_path, webhook, processes):
    url, got = webhook
    configure(home, url, ["pipeline.succeeded", "pipeline.failed", "schedule.skipped"])
    runs = tmp_path / "runs.txt"
    write_notebook(tmp_path / "tick.ipynb", "label = ''",
                   f"import os\nwith open({str(runs)!r}, 'a') as f: f.write(os.environ['MLPLAT_PIPELINE_RUN'] + ' ' + label + '\\n')")
    # the notebook's work is its side effect (a line per run), so it is never reused from an earlier run
    spec = write_pipeline(tmp_path, {"name": "tick", "parameters": {"label": "x"}, "cache": False,
                                     "steps": [{"name": "tick", "notebook": "tick.ipynb", "parameters": {"label": "{{ params.label }}"}}]})
    run_cli("schedule", "add", "every4s", "--pipeline", spec, "--cron", "* * * * * */4", "-p", "label=scheduled", check=0)
    log = open(tmp_path / "schedulers.log", "w")
    a, b = scheduler(log, processes), scheduler(log, processes)
    wait_for(lambda: sum(f["status"] == "succeeded" for f in ws.schedules.history("every4s")) >= 2, 120,
             "two runs from two schedulers")
    assert stop(a) == 0
    # a restart: a new process finds the schedule in the DB and goes on
    c = scheduler(log, processes)
    before = {f["slot"] for f in ws.schedules.history("every4s")}
    wait_for(lambda: any(f["scheduler"].split(":")[1] == str(c.pid) for f in ws.schedules.history("every4s")), 60,
             "a fire by the restarted scheduler")
    run_cli("schedule", "pause", "every4s", check=0)
    time.sleep(1)
    assert stop(b) == 0 and stop(c) == 0
    fires = ws.schedules.history("every4s", limit=1000)
    assert {f["slot"] for f in fires} > before
    slots = [f["slot"] for f in fires]
    assert len(slots) == len(set(slots))                      # one row per slot: the DB's primary key
    fired = [f for f in fires if f["run_id"]]
    lines = runs.read_text().split()
    ran = lines[0::2]
    assert len(ran) == len(set(ran)), "a run executed twice"
    assert set(lines[1::2]) == {"scheduled"}
    # every notebook execution belongs to a fire, and every fire that succeeded executed it
    assert {f["run_id"] for f in fired if f["status"] == "succeeded"} <= set(ran) <= {f["run_id"] for f in fired}
    assert all(f["status"] in ("succeeded", "skipped", "cancelled") for f in fires), fires
    # every run is linked to its schedule, and each one notified
    linked = {n.split(":", 1)[1] for n in ws.lineage.of("schedule:every4s")["downstream_nodes"] if n.startswith("pipeline_run:")}
    assert {f["run_id"] for f in fired} == linked
    notified = {e["details"]["run"] for e in got if e["event"] == "pipeline.succeeded"}
    assert {f["run_id"] for f in fired if f["status"] == "succeeded"} == notified
    skipped = [f for f in fires if f["status"] == "skipped"]
    assert all("overlap: forbid" in f["detail"] for f in skipped)
    assert len([e for e in got if e["event"] == "schedule.skipped"]) == len(skipped)
    listed = json.loads(run_cli("schedule", "list", "--json", check=0).stdout)
    assert listed["schedules"][0]["paused"] is True and listed["schedulers"] == []


@pytest.mark.services
@pytest.mark.slow
def test_overlap_replace_cancels_the_running_run(ws, home, tmp_path, processes):
    write_notebook(tmp_path / "slow.ipynb", "seconds = 120",
                   "import os, time\nopen(f\"kernel-{os.environ['MLPLAT_PIPELINE_RUN']}-{os.getpid()}.pid\", 'w').write('')\ntime.sleep(seconds)")
    spec = write_pipeline(tmp_path, {"name": "slow", "steps": [{"name": "slow", "notebook": "slow.ipynb"}]})
    ws.schedules.add("replace", spec, "* * * * * */10", overlap="replace")
    s = scheduler(open(tmp_path / "scheduler.log", "w"), processes)
    wait_for(lambda: len([f for f in ws.schedules.history("replace") if f["run_id"]]) >= 2, 150, "a second run")
    ws.schedules.pause("replace")
    first, second = sorted((f for f in ws.schedules.history("replace") if f["run_id"]), key=lambda f: f["slot"])[:2]
    def stopped(run_id):
        try: return ws.pipelines.get(run_id).status != "running"
        except Exception: return False                        # its record is still being written
    wait_for(lambda: stopped(first["run_id"]), 150, "the first run to stop")
    assert ws.pipelines.get(first["run_id"]).status == "cancelled"
    assert "replaced by the run of slot" in ws.pipelines.get(first["run_id"]).steps["slow"].error
    wait_for(lambda: list(tmp_path.glob(f"kernel-{second['run_id']}-*.pid")), 90, "the second run's kernel")
    kernels = [int(f.stem.rsplit("-", 1)[1]) for f in tmp_path.glob("kernel-*.pid")]   # the first run's, if it started
    assert stop(s) == 0                                       # stopping cancels the second run too
    time.sleep(1)
    for pid in kernels:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    rec = ws.pipelines.get(second["run_id"])
    assert rec.status == "cancelled" and "stopped" in rec.steps["slow"].error
    statuses = {f["run_id"]: f["status"] for f in ws.schedules.history("replace") if f["run_id"]}
    assert statuses[first["run_id"]] == statuses[second["run_id"]] == "cancelled"


def test_bad_schedules_are_refused_and_cronjob_validates(ws, home, tmp_path):
    write_notebook(tmp_path / "a.ipynb", "n = 1", "m = n")
    spec = write_pipeline(tmp_path, {"name": "p", "parameters": {"n": 1},
                                     "steps": [{"name": "a", "notebook": "a.ipynb", "parameters": {"n": "{{ params.n }}"}}]})
    r = run_cli("schedule", "add", "nightly", "--pipeline", spec, "--cron", "0 2 * * 8", check=1)
    assert "not a cron expression" in r.stderr
    r = run_cli("schedule", "add", "nightly", "--pipeline", spec, "--cron", "0 2 * * *", "-p", "n=many", check=1)
    assert "n" in r.stderr and "int" in r.stderr
    r = run_cli("schedule", "add", "nightly", "--pipeline", tmp_path / "nope.yaml", "--cron", "0 2 * * *", check=1)
    assert "does not exist" in r.stderr
    run_cli("schedule", "add", "nightly", "--pipeline", spec, "--cron", "0 2 * * *", "--timezone", "Asia/Dubai", "-p", "n=3", check=0)
    assert "kubernetes.image" in run_cli("schedule", "cronjob", "nightly", check=1).stderr
    cfg = home / "mlplat.toml"
    cfg.write_text(cfg.read_text().replace('image = ""', 'image = "registry.example.com/mlplat:0.1"', 1)
                   .replace('home_claim = ""', 'home_claim = "mlplat-home"', 1))
    import yaml
    m = yaml.safe_load(run_cli("schedule", "cronjob", "nightly", check=0).stdout)
    assert (m["kind"], m["spec"]["schedule"], m["spec"]["timeZone"], m["spec"]["concurrencyPolicy"]) == \
        ("CronJob", "0 2 * * *", "Asia/Dubai", "Forbid")
    container = m["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["pipelines", "run", str(spec.resolve()), "-p", "n=3"]
    assert "pipelines:schedule" in run_cli("schedule", "remove", "nightly", env_extra={"MLPLAT_USER": "mallory"}, check=3).stderr
    run_cli("schedule", "remove", "nightly", check=0)
    assert run_cli("schedule", "list", "--json", check=0).stdout.count('"name"') == 0
