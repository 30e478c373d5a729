"""Delegated identity with real papermill kernels and a real jupyter_server in bearer mode: work acts as the person
who asked, never as the process that runs it. The workspace's OS user is bound to admin, as a personal install
is; a data scientist's token cannot borrow that through a notebook run from JupyterLab, a schedule, or a job; each
refusal is audited under the caller. An inference client reads no pipeline runs, schedules or notebooks; a job's
`env` values are shown to its submitter only."""
import asyncio
import json
import threading
import time

import pytest
from tornado.httpclient import HTTPClientError

from helpers import configure, wait_for, write_notebook

pytest_plugins = ["pytest_jupyter.jupyter_server"]

STEAL = "import mlplat\nmlplat.connect().tokens.create('stolen', ['admin'])"
WHO = ("import mlplat, mlplat.pipelines as pl\nw = mlplat.connect()\nw.pipelines.list()\n"
       "pl.output('who', [w.principal.name, w.principal.claims.get('delegated'), w.principal.claims.get('scope')])")


@pytest.fixture
def ws(home):
    "A workspace whose OS user is admin; roles bound explicitly for this test (carol a data scientist)."
    import mlplat
    mlplat.connect(home)
    toml = home / "mlplat.toml"
    toml.write_text(toml.read_text().replace("[rbac.bindings]", '[rbac.bindings]\n"carol" = ["data-scientist"]'))
    return mlplat.connect(home)


@pytest.fixture
def tokens(ws):
    "Bearer tokens: a data scientist, an inference client, and a colleague of the data scientist (reads runs and jobs)."
    return {name: ws.tokens.create(name, [role])["token"]
            for name, role in (("dana", "data-scientist"), ("app", "inference-client"), ("vera", "data-scientist"))}


@pytest.fixture
def jp_server_config(ws):
    return {"ServerApp": {"jpserver_extensions": {"mlplat.jupyter.server": True}},
            "MlplatServer": {"home": str(ws.config.home), "identity": "bearer"}}


def body(resp):
    return json.loads(resp.body)


async def refused(fetch, *parts, **kw):
    with pytest.raises(HTTPClientError) as e:
        await fetch(*parts, **kw)
    return e.value.code, json.loads(e.value.response.body)


async def finished(fetch, run_id, token, timeout=180):
    "Poll a run through the API, as its caller, until it ends."
    end = time.time() + timeout
    while time.time() < end:
        run = body(await fetch("mlplat", "api", "pipelines", "runs", run_id, headers={"X-Mlplat-Token": token}))
        if run["status"] != "running": return run
        await asyncio.sleep(0.5)
    raise AssertionError(f"run {run_id} did not end in {timeout} s")


@pytest.mark.services
@pytest.mark.slow
async def test_a_notebook_run_from_jupyterlab_acts_as_the_caller_not_the_server(jp_fetch, jp_root_dir, ws, tokens):
    write_notebook(jp_root_dir / "steal.ipynb", "x = 0", STEAL)
    write_notebook(jp_root_dir / "who.ipynb", "x = 0", WHO)
    dana = {"X-Mlplat-Token": tokens["dana"]}
    started = [body(await jp_fetch("mlplat", "api", "notebooks", "run", method="POST", headers=dana,
                                   body=json.dumps({"path": nb}))) for nb in ("steal.ipynb", "who.ipynb")]
    steal, who = [await finished(jp_fetch, r["id"], tokens["dana"]) for r in started]
    # the server's OS user is admin, but the step acted as the caller, who may not create tokens
    assert steal["status"] == "failed" and steal["started_by"] == "sa:dana"
    assert "PermissionDenied: 'sa:dana' (roles: data-scientist) may not tokens:create" in steal["steps"][0]["error"]
    assert "stolen" not in [t["name"] for t in ws.tokens.list(include_inactive=True)]
    denied = [r for r in ws.audit.records(None) if r["action"] == "tokens.create" and r["outcome"] == "denied"]
    assert [r["principal"] for r in denied] == ["sa:dana"]
    # a legitimate run works, as the caller, through a token delegated for that run and revoked when it ended
    assert who["status"] == "succeeded", who
    assert who["steps"][0]["outputs"]["who"] == ["sa:dana", True, f"pipeline-run:{who['id']}"]
    from mlplat.governance.delegation import Delegations
    assert Delegations(ws).live(f"pipeline-run:{who['id']}") == []
    runs = [r for r in ws.audit.records(None) if r["action"] == "pipeline.run"]
    assert {r["principal"] for r in runs} == {"sa:dana"}
    assert ws.principal.name not in {r["principal"] for r in ws.audit.records(None) if r["action"] in ("token.delegate", "pipeline.run")}


@pytest.mark.services
async def test_reads_are_authorized_an_inference_client_sees_no_runs_schedules_or_notebooks(jp_fetch, jp_root_dir, ws, tokens):
    write_notebook(jp_root_dir / "who.ipynb", "x = 0", WHO)
    rec = ws.pipelines.run({"name": "who", "steps": [{"name": "s", "notebook": str(jp_root_dir / "who.ipynb")}]})
    ws.schedules.add_notebook("nightly", jp_root_dir / "who.ipynb", "0 2 * * *")
    app, vera = {"X-Mlplat-Token": tokens["app"]}, {"X-Mlplat-Token": tokens["vera"]}
    for parts, method in ((("pipelines", "runs"), "GET"), (("pipelines", "runs", rec.id), "GET"), (("schedules",), "GET"),
                          (("pipelines", "runs", rec.id, "steps", "s", "open"), "POST")):
        code, err = await refused(jp_fetch, "mlplat", "api", *parts, method=method, headers=app, **({"body": ""} if method == "POST" else {}))
        assert code == 403 and "'sa:app' (roles: inference-client) may not pipelines:read" in err["message"], (parts, err)
    assert not (jp_root_dir / "mlplat-runs").exists()                         # nothing was copied out for it
    assert [r["id"] for r in body(await jp_fetch("mlplat", "api", "pipelines", "runs", headers=vera))] == [rec.id]
    assert [s["name"] for s in body(await jp_fetch("mlplat", "api", "schedules", headers=vera))] == ["nightly"]
    denied = [r for r in ws.audit.records(None) if r["outcome"] == "denied" and r["principal"] == "sa:app"]
    assert len(denied) == 4 and {r["details"]["permission"] for r in denied} == {"pipelines:read"}


@pytest.mark.services
@pytest.mark.slow
async def test_a_job_acts_as_its_submitter_and_only_they_see_its_env_values(jp_fetch, ws, tokens, tmp_path):
    script = tmp_path / "code" / "whoami.py"
    script.parent.mkdir()
    script.write_text("import os, mlplat\nw = mlplat.connect()\n"
                      "print('acting as', w.principal.name, w.principal.claims.get('scope'), os.environ.get('MLPLAT_USER'), flush=True)\n")
    dana = ws.authenticate(tokens["dana"])
    rec = dana.jobs.submit({"name": "whoami", "entrypoint": str(script), "resources": {"processes_per_node": 1},
                            "env": {"API_KEY": "s3cret"}}, wait=True, timeout=240)
    assert rec.state == "succeeded", "".join(dana.jobs.logs(rec.id))
    assert f"acting as sa:dana job:{rec.id} None" in "".join(dana.jobs.logs(rec.id))
    from mlplat.governance.delegation import Delegations
    assert Delegations(ws).live(f"job:{rec.id}") == []                        # revoked when it ended
    mine = body(await jp_fetch("mlplat", "api", "jobs", rec.id, headers={"X-Mlplat-Token": tokens["dana"]}))
    theirs = body(await jp_fetch("mlplat", "api", "jobs", rec.id, headers={"X-Mlplat-Token": tokens["vera"]}))
    assert mine["spec"]["env"] == {"API_KEY": "s3cret"} and theirs["spec"]["env"] == {"API_KEY": "***"}
    listed = body(await jp_fetch("mlplat", "api", "jobs", headers={"X-Mlplat-Token": tokens["vera"]}))
    assert [j["spec"]["env"] for j in listed] == [{"API_KEY": "***"}]
    assert ws.jobs.status(rec.id).spec["env"] == {"API_KEY": "s3cret"}         # the OS user is admin: jobs:read_env
    code, _ = await refused(jp_fetch, "mlplat", "api", "jobs", rec.id, headers={"X-Mlplat-Token": tokens["app"]})
    assert code == 403


@pytest.mark.services
@pytest.mark.slow
def test_each_fire_acts_as_the_schedules_creator_rechecked_at_every_fire(ws, tokens, tmp_path, webhook):
    import mlplat
    from mlplat.pipelines.scheduler import Scheduler
    url, got = webhook
    configure(ws.config.home, url, ["schedule.skipped"])
    write_notebook(tmp_path / "steal.ipynb", "x = 0", STEAL)
    write_notebook(tmp_path / "who.ipynb", "x = 0", WHO)
    dana, carol = ws.authenticate(tokens["dana"]), mlplat.connect(ws.config.home).as_user("carol")
    every = "* * * * * */3"
    dana.schedules.add_notebook("dana-steal", tmp_path / "steal.ipynb", every)
    dana.schedules.add_notebook("dana-who", tmp_path / "who.ipynb", every)
    carol.schedules.add_notebook("carol-who", tmp_path / "who.ipynb", every)
    names = ("dana-steal", "dana-who", "carol-who")
    admin = mlplat.connect(ws.config.home)

    def fires(name, *statuses):
        return [f for f in admin.schedules.history(name, limit=1000) if f["status"] in statuses]
    stop = threading.Event()
    sched = Scheduler(admin, tick_seconds=0.5)   # the scheduler's own principal is the admin OS user
    th = threading.Thread(target=sched.run_forever, args=(stop,), daemon=True)
    th.start()
    try:
        wait_for(lambda: all(fires(n, "succeeded", "failed") for n in names), 240, "a finished fire of each schedule")
        for n in names: admin.schedules.pause(n)
        # dana's token is revoked and carol loses her binding: every later fire is refused
        admin.tokens.revoke(next(t["id"] for t in admin.tokens.list() if t["name"] == "dana"))
        toml = ws.config.home / "mlplat.toml"
        toml.write_text(toml.read_text().replace('"carol" = ["data-scientist"]\n', ""))
        for n in names: admin.schedules.resume(n)
        wait_for(lambda: all(fires(n, "refused") for n in names), 60, "a refused fire of each schedule")
    finally:
        stop.set()
        th.join(120)
    steal, who, carols = fires("dana-steal", "failed")[-1], fires("dana-who", "succeeded")[-1], fires("carol-who", "succeeded")[-1]
    assert "may not tokens:create" in admin.pipelines.get(steal["run_id"]).steps["steal"].error
    assert admin.pipelines.get(who["run_id"]).steps["who"].outputs["who"][:2] == ["sa:dana", True]
    assert admin.pipelines.get(carols["run_id"]).steps["who"].outputs["who"][:2] == ["carol", True]
    assert "stolen" not in [t["name"] for t in admin.tokens.list(include_inactive=True)]
    assert "was revoked" in fires("dana-who", "refused")[0]["detail"]
    assert "'carol' (roles: none) may not pipelines:run" in fires("carol-who", "refused")[0]["detail"]
    records = admin.audit.records(None)
    assert {r["principal"] for r in records if r["action"] == "pipeline.run"} == {"sa:dana", "carol"}   # never the scheduler's
    assert {r["principal"] for r in records if r["action"] == "tokens.create" and r["outcome"] == "denied"} == {"sa:dana"}
    refusals = [r for r in records if r["action"] == "schedule.fire" and r["outcome"] == "denied"]
    assert {r["principal"] for r in refusals} == {"sa:dana", "carol"}
    notified = [e for e in got if e["event"] == "schedule.skipped" and "refused" in e["details"]["reason"]]
    assert {e["details"]["schedule"] for e in notified} == set(names)
    from mlplat.governance.delegation import Delegations
    assert all(not Delegations(admin).live(f"schedule-fire:{f['schedule']}@{f['slot']}")
               for n in names for f in admin.schedules.history(n, limit=1000))
