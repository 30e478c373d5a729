"""The Jupyter server extension against a real jupyter_server (pytest-jupyter): authentication and XSRF on every
route, RBAC from the core (a viewer cannot promote: 403 with the core's message), errors as JSON with a hint,
every response valid against the OpenAPI models, a job's log streamed while it runs, a notebook run with
parameters through the pipeline runner, a notebook scheduled, a template copied."""
import asyncio
import json
import time

import pytest
from jupyter_server.auth.identity import IdentityProvider, User
from pydantic import TypeAdapter
from tornado.httpclient import HTTPClientError

from helpers import REPO, clear_mlplat_env, parameters_notebook, register_version
from mlplat.jupyter.openapi import openapi
from mlplat.jupyter.routes import match

pytest_plugins = ["pytest_jupyter.jupyter_server"]


class HeaderUser(IdentityProvider):
    "Jupyter's user from a header (as JupyterHub would establish it); no header: not logged in."
    def get_user(self, handler):
        name = handler.request.headers.get("X-Test-User")
        return User(username=name) if name else None


def as_user(name):
    "What a browser logged in as `name` sends: the user, and the XSRF cookie echoed in a header (no token)."
    return {"X-Test-User": name, "Cookie": "_xsrf=abc123", "X-XSRFToken": "abc123"}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    "One workspace for the module (registering is the slow part): two versions of 'risk'; vera a viewer, mo an ML engineer."
    import mlplat
    home = tmp_path_factory.mktemp("jupyter") / "ws"
    with pytest.MonkeyPatch.context() as mp:
        clear_mlplat_env(mp)
        ws = mlplat.connect(home)
        register_version(ws, 1.0), register_version(ws, 0.5)
    toml = home / "mlplat.toml"
    toml.write_text(toml.read_text().replace("[rbac.bindings]", '[rbac.bindings]\n"vera" = ["viewer"]\n"mo" = ["ml-engineer"]'))
    return home


@pytest.fixture
def ws(shared, tmp_path, monkeypatch):
    "The module's workspace, in force for this test (MLPLAT_HOME), with a scratch working folder."
    import mlplat
    monkeypatch.chdir(tmp_path)
    clear_mlplat_env(monkeypatch)
    monkeypatch.setenv("MLPLAT_HOME", str(shared))
    return mlplat.connect(shared)


@pytest.fixture
def jp_server_config(request, ws):
    "The extension on the test's workspace; `@pytest.mark.identity('jupyter')` acts as Jupyter's user."
    marker = request.node.get_closest_marker("identity")
    cfg = {"ServerApp": {"jpserver_extensions": {"mlplat.jupyter.server": True}},
           "MlplatServer": {"home": str(ws.config.home), "identity": marker.args[0] if marker else "server"}}
    if marker and marker.args[0] == "jupyter": cfg["ServerApp"]["identity_provider_class"] = HeaderUser
    return cfg


def body(resp):
    return json.loads(resp.body)


def valid(path, method, data):
    "The response fits the route's declared model (the contract the TypeScript types come from)."
    route, _ = match(method, path)
    TypeAdapter(route.response).validate_python(data)
    return data


async def error(fetch, *parts, **kw):
    with pytest.raises(HTTPClientError) as e:
        await fetch(*parts, **kw)
    return e.value.code, json.loads(e.value.response.body) if e.value.response.body else {}


@pytest.mark.services
async def test_unauthenticated_and_cross_site_requests_are_refused(jp_fetch, ws):
    before = ws.models.history("risk")
    code, _ = await error(jp_fetch, "mlplat", "api", "models", headers={"Authorization": ""})
    assert code == 403
    # a POST without the token (a cross-site form has no token; the missing XSRF proof is refused in the viewer test)
    code, _ = await error(jp_fetch, "mlplat", "api", "models", "risk", "promote", method="POST",
                          body=json.dumps({"version": 1, "alias": "champion"}), headers={"Authorization": ""})
    assert code == 403
    code, _ = await error(jp_fetch, "mlplat", "api", "openapi.json", headers={"Authorization": ""})
    assert code == 403
    assert ws.models.history("risk") == before   # nothing moved


@pytest.mark.identity("bearer")
@pytest.mark.services
async def test_bearer_identity_acts_as_the_credential_of_each_request(jp_fetch, ws):
    viewer = ws.tokens.create("dash", ["viewer"])["token"]
    engineer = ws.tokens.create("ci", ["ml-engineer"])
    me = body(await jp_fetch("mlplat", "api", "me", headers={"X-Mlplat-Token": engineer["token"]}))
    assert (me["principal"], me["roles"]) == ("sa:ci", ["ml-engineer"])
    for headers in ({}, {"X-Mlplat-Token": "mlp_000000000000_" + "A" * 43}):      # Jupyter's token alone proves nothing here
        code, err = await error(jp_fetch, "mlplat", "api", "models", headers=headers)
        assert code == 401 and err["error"] == "AuthenticationError"
    assert [m["name"] for m in body(await jp_fetch("mlplat", "api", "models", headers={"X-Mlplat-Token": viewer}))] == ["risk"]
    code, err = await error(jp_fetch, "mlplat", "api", "models", "risk", "promote", method="POST",
                            body=json.dumps({"version": 2, "alias": "prod"}), headers={"X-Mlplat-Token": viewer})
    assert code == 403 and "'sa:dash' (roles: viewer) may not models:promote" in err["message"]
    ws.tokens.revoke(engineer["id"])
    code, err = await error(jp_fetch, "mlplat", "api", "me", headers={"X-Mlplat-Token": engineer["token"]})
    assert code == 401 and "revoked" in err["message"]
    assert ws.models.history("risk", "prod") == []
    refused = [r for r in ws.audit.records(limit=None) if r["action"] == "auth.login" and r["outcome"] == "denied"]
    assert len(refused) >= 3 and all(r["resource"] == "jupyter" for r in refused[-3:])


@pytest.mark.identity("jupyter")
@pytest.mark.services
async def test_a_viewer_cannot_promote_and_rbac_follows_the_jupyter_user(jp_fetch, ws):
    me = body(await jp_fetch("mlplat", "api", "me", headers=as_user("vera")))
    assert (me["principal"], me["roles"]) == ("vera", ["viewer"])
    listed = body(await jp_fetch("mlplat", "api", "models", headers=as_user("vera")))
    assert [m["name"] for m in listed] == ["risk"]           # viewers read
    code, err = await error(jp_fetch, "mlplat", "api", "models", "risk", "promote", method="POST",
                            body=json.dumps({"version": 2, "alias": "prod"}), headers=as_user("vera"))
    assert code == 403 and err["error"] == "PermissionDenied"
    assert "'vera' (roles: viewer) may not models:promote" in err["message"] and "ml-engineer" in err["hint"]
    code, err = await error(jp_fetch, "mlplat", "api", "models", "risk", "versions", "2", "check", headers=as_user("vera"))
    assert code == 403 and err["error"] == "PermissionDenied"
    assert ws.models.history("risk", "prod") == []
    code, _ = await error(jp_fetch, "mlplat", "api", "models", headers={})   # no Jupyter user at all
    assert code == 403
    code, err = await error(jp_fetch, "mlplat", "api", "models", "risk", "promote", method="POST",   # no XSRF proof
                            body=json.dumps({"version": 2, "alias": "prod"}), headers={"X-Test-User": "mo"})
    assert code == 403 and ws.models.history("risk", "prod") == []
    moved = body(await jp_fetch("mlplat", "api", "models", "risk", "promote", method="POST",
                                body=json.dumps({"version": 2, "alias": "prod", "reason": "better"}), headers=as_user("mo")))
    assert "prod" in moved["aliases"]
    assert [(h["principal"], h["to_version"]) for h in ws.models.history("risk", "prod")] == [("mo", 2)]
    audit = [r for r in ws.audit.records(20) if r["action"] == "models.promote"]
    assert audit and audit[0]["principal"] == "mo"


@pytest.mark.services
async def test_models_promote_rollback_and_errors(jp_fetch, ws):
    api_ = ("mlplat", "api")
    valid("/models", "GET", body(await jp_fetch(*api_, "models")))
    versions = valid("/models/risk/versions", "GET", body(await jp_fetch(*api_, "models", "risk", "versions")))
    assert [v["version"] for v in versions] == [2, 1]
    assert {g["gate"] for g in versions[0]["gates"]} >= {"parity", "latency"} and all(g["passed"] for g in versions[0]["gates"])
    check = valid("/models/risk/versions/2/check", "GET", body(await jp_fetch(*api_, "models", "risk", "versions", "2", "check")))
    assert {g["gate"] for g in check} == {"parity", "latency", "metrics", "residency", "rbac"} and all(g["passed"] for g in check)
    for v in (1, 2):
        valid("/models/risk/promote", "POST", body(await jp_fetch(*api_, "models", "risk", "promote", method="POST",
                                                                  body=json.dumps({"version": v, "alias": "champion"}))))
    assert ws.models.get("risk", "champion").version == 2      # verified through the core
    back = body(await jp_fetch(*api_, "models", "risk", "rollback", method="POST", body=json.dumps({"alias": "champion", "reason": "oops"})))
    assert back["version"] == 1 and ws.models.get("risk", "champion").version == 1
    hist = valid("/models/risk/history", "GET", body(await jp_fetch(*api_, "models", "risk", "history", params={"alias": "champion"})))
    assert [(h["action"], h["to_version"]) for h in hist][-3:] == [("promote", 1), ("promote", 2), ("rollback", 1)]   # oldest first
    code, err = await error(jp_fetch, *api_, "models", "risk", "promote", method="POST", body=json.dumps({"version": "two"}))
    assert code == 400 and "version: Input should be a valid integer" in err["message"] and "alias: Field required" in err["message"]
    code, err = await error(jp_fetch, *api_, "models", "nope", "versions")
    assert code == 404 and "no registered model 'nope'" in err["message"] and err["hint"]
    code, err = await error(jp_fetch, *api_, "models", "risk", "promote", method="POST", body=json.dumps({"version": 9, "alias": "champion"}))
    assert code == 404, err
    code, err = await error(jp_fetch, *api_, "jobs", params={"limit": "lots"})
    assert code == 400 and "limit must be a whole number" in err["message"]
    code, err = await error(jp_fetch, *api_, "no", "such", "route")
    assert code == 404 and "openapi.json" in err["hint"]
    doc = body(await jp_fetch(*api_, "openapi.json"))
    assert "/mlplat/api/models/{name}/promote" in doc["paths"]


@pytest.mark.services
async def test_a_job_log_streams_while_the_job_runs(jp_fetch, ws, tmp_path):
    script = tmp_path / "code" / "slow.py"
    script.parent.mkdir()
    script.write_text("import time\nfor i in range(4):\n    print(f'step {i}', flush=True)\n    time.sleep(1.5)\n"
                      "print('half a line', end='', flush=True)\ntime.sleep(2)\nprint(' and its end', flush=True)\n")
    rec = ws.jobs.submit({"name": "slow", "entrypoint": str(script), "resources": {"processes_per_node": 1}})
    seen = []   # (text, job state when the chunk arrived)

    def on_chunk(data):
        seen.append((data.decode(), ws.jobs.status(rec.id).state))
    await jp_fetch("mlplat", "api", "jobs", rec.id, "log", "stream", streaming_callback=on_chunk, request_timeout=180)
    text = "".join(t for t, _ in seen)
    assert all(f"step {i}" in text for i in range(4)) and "half a line and its end" in text, text
    assert any("step 0" in t and state == "running" for t, state in seen), seen   # it arrived while the job ran
    assert ws.jobs.status(rec.id).state == "succeeded"
    chunk = valid(f"/jobs/{rec.id}/log", "GET", body(await jp_fetch("mlplat", "api", "jobs", rec.id, "log")))
    assert chunk["done"] and "step 3" in chunk["text"] and "\nhalf a line and its end\n" in chunk["text"]
    again = body(await jp_fetch("mlplat", "api", "jobs", rec.id, "log", params={"offset": str(chunk["offset"])}))
    assert again["text"] == "" and again["eof"]
    valid("/jobs", "GET", body(await jp_fetch("mlplat", "api", "jobs")))
    code, _ = await error(jp_fetch, "mlplat", "api", "jobs", "nope", "log", "stream")
    assert code == 404


@pytest.mark.services
async def test_run_a_notebook_with_parameters_then_open_the_result(jp_fetch, ws, jp_root_dir):
    parameters_notebook(jp_root_dir / "report.ipynb")
    params = body(await jp_fetch("mlplat", "api", "notebooks", "parameters", params={"path": "report.ipynb"}))
    assert [(p["name"], p["type"], p["default"]) for p in params["parameters"]] == [("n", "int", 2), ("label", "str", "x")]
    code, err = await error(jp_fetch, "mlplat", "api", "notebooks", "run", method="POST",
                            body=json.dumps({"path": "report.ipynb", "parameters": {"n": "seven"}}))
    assert code == 400 and "not int" in err["message"]
    code, err = await error(jp_fetch, "mlplat", "api", "notebooks", "run", method="POST",
                            body=json.dumps({"path": "../outside.ipynb"}))
    assert code == 400 and "outside the server's root" in err["message"]
    run = body(await jp_fetch("mlplat", "api", "notebooks", "run", method="POST",
                              body=json.dumps({"path": "report.ipynb", "parameters": {"n": 7}})))
    assert run["status"] == "running" and run["parameters"] == {"n": 7}
    end = time.time() + 120
    while run["status"] == "running" and time.time() < end:
        await asyncio.sleep(0.5)
        run = valid(f"/pipelines/runs/{run['id']}", "GET", body(await jp_fetch("mlplat", "api", "pipelines", "runs", run["id"])))
    assert run["status"] == "succeeded", run
    step = run["steps"][0]
    assert step["outputs"] == {"total": 70} and step["lab_path"] is None   # executed under the workspace
    opened = body(await jp_fetch("mlplat", "api", "pipelines", "runs", run["id"], "steps", step["name"], "open", method="POST", body=""))
    assert (jp_root_dir / opened["paths"][0]).is_file() and opened["paths"][0].startswith("mlplat-runs/")
    assert '"total"' in (jp_root_dir / opened["paths"][0]).read_text()    # sealed under the workspace, opened decrypted
    assert run["id"] in [r["id"] for r in valid("/pipelines/runs", "GET", body(await jp_fetch("mlplat", "api", "pipelines", "runs")))]
    assert f"pipeline_run:{run['id']}" in ws.lineage.of(f"jupyter:{ws.principal.name}")["downstream_nodes"]


@pytest.mark.services
async def test_schedule_a_notebook_and_copy_a_template(jp_fetch, ws, jp_root_dir):
    parameters_notebook(jp_root_dir / "report.ipynb")
    s = valid("/schedules", "POST", body(await jp_fetch("mlplat", "api", "schedules", method="POST", body=json.dumps(
        {"name": "nightly-report", "path": "report.ipynb", "cron": "0 2 * * *", "parameters": {"n": 3}, "timezone": "Asia/Dubai"}))))
    assert s["next_slot"] and s["paused"] is False
    assert ws.pipelines.load(ws.schedules.get("nightly-report").pipeline).resolve_params({}) == {"n": 3}
    code, err = await error(jp_fetch, "mlplat", "api", "schedules", method="POST", body=json.dumps(
        {"name": "nightly-report", "path": "report.ipynb", "cron": "0 2 * * *"}))
    assert code == 409 and "exists" in err["message"]
    code, err = await error(jp_fetch, "mlplat", "api", "schedules", method="POST", body=json.dumps(
        {"name": "bad", "path": "report.ipynb", "cron": "every night"}))
    assert code == 400 and "cron" in err["message"]
    paused = body(await jp_fetch("mlplat", "api", "schedules", "nightly-report", "pause", method="POST", body=""))
    assert paused["paused"] and paused["next_slot"] is None
    listed = valid("/schedules", "GET", body(await jp_fetch("mlplat", "api", "schedules")))
    assert [x["name"] for x in listed] == ["nightly-report"]
    r = await jp_fetch("mlplat", "api", "schedules", "nightly-report", method="DELETE")
    assert r.code == 204 and ws.schedules.list() == []
    templates = valid("/templates", "GET", body(await jp_fetch("mlplat", "api", "templates")))
    assert {t["kind"] for t in templates} == {"pipeline", "training", "dashboard", "serving"}
    copied = body(await jp_fetch("mlplat", "api", "templates", "copy", method="POST",
                                 body=json.dumps({"name": "monitoring-dashboard", "folder": "dash"})))
    assert copied["paths"] == ["dash/monitoring.ipynb"] and (jp_root_dir / "dash" / "monitoring.ipynb").is_file()
    again = body(await jp_fetch("mlplat", "api", "templates", "copy", method="POST",
                                body=json.dumps({"name": "monitoring-dashboard", "folder": "dash"})))
    assert again["paths"] == ["dash/monitoring-1.ipynb"]


def test_the_committed_openapi_document_and_typescript_types_are_current():
    import mlplat
    committed = json.loads((REPO / "extension" / "openapi.json").read_text())
    assert committed == openapi(mlplat.__version__), "run `make openapi` (mlplat jupyter openapi) and rebuild the extension"
