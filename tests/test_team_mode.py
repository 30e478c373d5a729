"""Team mode end to end: `mlplat server` (two processes on PostgreSQL, TLS) governs the workspace; clients hold the
service's URL and a token only, and reach it through `mlplat.connect(URL)` and the CLI. Identities come from the local
OIDC issuer (roles from its `groups` claim); every escalation is refused and audited under the caller."""
import json
import secrets
import ssl

import pytest
import sqlalchemy as sa

from helpers import (BIN, free_port, register_version, run_cli, start_process, stop_process, wait_for, wait_http, write_notebook,
                     write_pipeline)
from oidc_issuer import Issuer

pytestmark = pytest.mark.services


def fresh_database(server_url: str, name: str) -> str:
    "A new, empty database on the test cluster: this module's audit chain and tables are its own."
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as c: c.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return server_url.rsplit("/", 1)[0] + "/" + name


def tls_files(folder):
    "A throw-away CA and the service's certificate for 127.0.0.1, as PEM files: (ca, cert, key)."
    import trustme
    ca, paths = trustme.CA(), (folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    issued = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(paths[0])
    issued.cert_chain_pems[0].write_to_path(paths[1])
    issued.private_key_pem.write_to_path(paths[2])
    return paths


@pytest.fixture(scope="module")
def team(tmp_path_factory, postgres_url):
    from mlplat.config import Config
    from mlplat.governance.identity import Principal
    from mlplat.workspace import Workspace
    root = tmp_path_factory.mktemp("team")
    issuer = Issuer()
    mlflow_port, mlflow_log = free_port(), root / "mlflow.log"
    # MLflow's tracking server with its artifact proxy: clients log runs there, never into a backend store
    mlflow = start_process([BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", mlflow_port, "--workers", 1,
                            "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--serve-artifacts",
                            "--artifacts-destination", root / "mlartifacts"], mlflow_log, cwd=root)
    config = root / "mlplat.toml"
    config.write_text(f"""
[workspace]
home = ".mlplat"
[service]
run_user_code = true   # this service's host holds nothing else: registering may unpickle the team's models here
[mlflow]
tracking_uri = "http://127.0.0.1:{mlflow_port}"
artifact_root = "mlflow-artifacts:"
[platform_db]
url = "{fresh_database(postgres_url, "team_mode")}"
[identity]
provider = "oidc"
oidc_issuer = "{issuer.url}"
oidc_audience = "mlplat"
roles_claim = "groups"
step_up = ["models.promote@champion", "tokens.create"]
[identity.role_map]
ds = "data-scientist"
mle = "ml-engineer"
view = "viewer"
edge = "inference-client"
ops = "admin"
audit = "auditor"
""")
    wait_http(f"http://127.0.0.1:{mlflow_port}/health", mlflow, mlflow_log)
    # the operator seeds the workspace on the service's host, in process (the embedded core, as an admin with MFA)
    cfg = Config.load(env={"MLPLAT_CONFIG": str(config)})
    operator = Workspace(cfg, Principal("operator", ("admin",), {"amr": ["mfa"]}))
    register_version(operator, 1.0)
    register_version(operator, 0.5)
    operator.models.promote("risk", 1, "champion", "first release")
    ca, cert, key = tls_files(root)
    port = free_port()
    log = root / "server.log"
    proc = start_process([BIN / "mlplat", "server", "--port", port, "--workers", 2, "--tls-cert", cert, "--tls-key", key],
                         log, env={"MLPLAT_CONFIG": str(config)}, cwd=root)
    url = f"https://127.0.0.1:{port}"
    try:
        wait_http(url + "/health/ready", proc, log, verify=ssl.create_default_context(cafile=str(ca)))
        yield {"url": url, "ca": str(ca), "issuer": issuer, "operator": operator, "log": log, "root": root,
               "mlflow": f"http://127.0.0.1:{mlflow_port}"}
    finally:
        stop_process(proc)
        stop_process(mlflow)
        operator.engine.dispose()


def as_(team, *groups, **claims):
    "A remote workspace acting as the bearer of a fresh JWT with these groups and claims."
    import mlplat
    return mlplat.connect(team["url"], token=team["issuer"].token(groups=list(groups), **claims))


@pytest.fixture(autouse=True)
def trust(team, monkeypatch):
    monkeypatch.setenv("MLPLAT_SERVICE_CA_BUNDLE", team["ca"])
    monkeypatch.delenv("MLPLAT_TOKEN", raising=False)


def audited(team, outcome, principal=None, permission=None, action=None):
    "Audit records (newest first) with this outcome, and the principal, permission and action when given."
    return [r for r in team["operator"].audit.records(limit=500) if r["outcome"] == outcome
            and principal in (None, r["principal"]) and action in (None, r["action"])
            and permission in (None, (r["details"] or {}).get("permission"))]


def test_a_client_holds_a_url_and_a_token_only(team):
    ws = as_(team, "ds", sub="ds-1")
    assert ws.info()["mode"] == "team" and ws.principal.roles == ("data-scientist",)
    for secret in ("engine", "config", "governance", "crypto"):
        with pytest.raises(Exception, match="not offered by the platform service"):
            getattr(ws, secret)
    assert {m["name"] for m in ws.models.list()} == {"risk"}
    assert [v.version for v in ws.models.versions("risk")] == [2, 1]


def test_a_data_scientist_cannot_promote_and_the_audit_names_them(team):
    from mlplat.errors import PermissionDenied
    ws = as_(team, "ds", sub="ds-2")
    with pytest.raises(PermissionDenied, match="may not models:promote"):
        ws.models.promote("risk", 2, "champion", "sneaky")
    assert audited(team, "denied", ws.principal.name, "models:promote")
    assert [h["to_version"] for h in team["operator"].models.history("risk", "champion")] == [1]


def test_an_ml_engineer_promotes_only_with_step_up(team):
    from mlplat.errors import PermissionDenied
    with pytest.raises(PermissionDenied, match="multi-factor"):
        as_(team, "mle", sub="mle-1", amr=["pwd"]).models.promote("risk", 2, "champion", "better AUC")
    ws = as_(team, "mle", sub="mle-1", amr=["pwd", "mfa"])
    v = ws.models.promote("risk", 2, "champion", "better AUC")
    assert v.version == 2 and "champion" in v.aliases
    moves = ws.models.history("risk", "champion")
    assert moves[-1]["to_version"] == 2 and moves[-1]["principal"] == ws.principal.name
    assert audited(team, "success", ws.principal.name, action="models.promote")
    ws.models.rollback("risk", "champion", "restore for the next tests")


def test_a_data_scientist_trains_and_registers_through_the_service(team):
    import mlflow
    from sklearn.linear_model import LogisticRegression
    from helpers import X, Y
    from mlplat.models.onnx import flavor_requirements
    ws = as_(team, "ds", sub="ds-3")
    client = ws.mlflow_client()
    assert client.tracking_uri == team["url"] + "/mlflow"     # MLflow behind the service, with the caller's token
    mlflow.set_tracking_uri(client.tracking_uri)
    exp = client.get_experiment_by_name("risk-team") or client.get_experiment(client.create_experiment("risk-team"))
    with mlflow.start_run(experiment_id=exp.experiment_id) as run:
        mlflow.sklearn.log_model(LogisticRegression(C=0.2).fit(X, Y), name="model", input_example=X[:5],
                                 pip_requirements=flavor_requirements("sklearn"))
    v = ws.models.register(run.info.run_id, "risk", sample=X[:64])
    assert v.version == 3 and v.run_id == run.info.run_id
    assert audited(team, "success", ws.principal.name, action="models.register")


def test_mlflow_behind_the_service_checks_the_callers_identity(team):
    import httpx
    from mlflow.exceptions import MlflowException
    ws = as_(team, "ds", sub="ds-5")
    client = ws.mlflow_client()
    assert client.search_experiments()                           # a data scientist reads (models:read)
    with pytest.raises(MlflowException, match="around mlplat's gates"):
        client.set_registered_model_alias("risk", "champion", 2)     # the registry is written through mlplat only
    assert audited(team, "denied", ws.principal.name, action="mlflow.registry_write")
    verify = ssl.create_default_context(cafile=team["ca"])
    edge = team["issuer"].token(groups=["edge"], sub="edge-2")
    r = httpx.post(team["url"] + "/mlflow/api/2.0/mlflow/runs/search", json={"experiment_ids": ["0"]}, verify=verify,
                   headers={"Authorization": f"Bearer {edge}"})
    assert r.status_code == 403 and r.json()["error"] == "PermissionDenied"     # an inference client reads no runs
    r = httpx.get(team["url"] + "/mlflow/api/2.0/mlflow/experiments/search?max_results=1", verify=verify)
    assert r.status_code == 401
    ds = {"Authorization": f"Bearer {team['issuer'].token(groups=['ds'], sub='ds-5')}"}
    r = httpx.post(team["url"] + "/mlflow/api/2.0/mlflow/runs/%2e%2e/registered-models/alias", verify=verify, headers=ds,
                   json={"name": "risk", "alias": "champion", "version": "2"})
    assert r.status_code == 400                                   # a proxy forwards exactly the path it authorized
    r = httpx.post(team["url"] + "/mlflow/api/2.0/mlflow/webhooks", verify=verify, headers=ds, json={"name": "x", "url": "http://x"})
    assert r.status_code == 403 and "not offered" in r.json()["message"]
    assert [h["to_version"] for h in team["operator"].models.history("risk", "champion")][-1] == 1


def test_a_viewer_reads_models_not_the_audit_tokens_or_keys(team):
    from mlplat.errors import PermissionDenied
    ws = as_(team, "view", sub="viewer-1")
    assert ws.models.list() and ws.features.list() == []
    for read in (lambda: ws.audit.records(), lambda: ws.tokens.list(), lambda: ws.keys.list()):
        with pytest.raises(PermissionDenied):
            read()


def test_an_inference_client_reads_no_pipeline_runs_or_schedules(team):
    from mlplat.errors import PermissionDenied
    ws = as_(team, "edge", sub="edge-1")
    for read in (lambda: ws.pipelines.list(), lambda: ws.schedules.list(), lambda: ws.jobs.list()):
        with pytest.raises(PermissionDenied):
            read()


def test_an_auditor_checks_the_signed_chain_with_their_own_copies(team):
    from mlplat.errors import PermissionDenied
    auditor = as_(team, "audit", sub="auditor-1")
    assert auditor.audit.checkpoint()["seq"] >= 1
    pem, kept = auditor.audit.public_key(), auditor.audit.checkpoints()
    report = auditor.audit.verify(public_key=pem, checkpoints=[dict(c) for c in kept])
    assert report.ok and report.checkpoints >= 1, report
    with pytest.raises(PermissionDenied):
        as_(team, "ds", sub="ds-4").audit.checkpoint()


def test_policy_changes_go_through_the_service_behind_step_up(team):
    from mlplat.errors import PermissionDenied
    newbie = as_(team, sub="newbie")
    name = newbie.principal.name

    def can_read():
        try: return bool(newbie.models.list())
        except PermissionDenied: return False
    assert not can_read()
    with pytest.raises(PermissionDenied, match="multi-factor"):
        as_(team, "ops", sub="ops-2").policy.bind(name, ["viewer"], "joins the team")
    with pytest.raises(PermissionDenied):
        as_(team, "mle", sub="mle-2", amr=["mfa"]).policy.bind(name, ["viewer"], "not an admin")
    admin = as_(team, "ops", sub="ops-2", amr=["mfa"])
    assert [b["role"] for b in admin.policy.bind(name, ["viewer"], "joins the team")] == ["viewer"]
    wait_for(can_read, 15, "the binding to take effect in every service process")
    admin.policy.unbind(name, ["viewer"], "left the team")
    wait_for(lambda: not can_read(), 15, "the withdrawn binding to stop working")
    assert audited(team, "success", admin.principal.name, action="policy.unbind")


def test_tokens_are_minted_by_the_service_and_revocation_is_immediate(team):
    from mlplat.errors import AuthenticationError, PermissionDenied
    admin = as_(team, "ops", sub="ops-1", amr=["mfa"])
    made = admin.tokens.create("ci", ["data-scientist"], "1h")
    import mlplat
    ci = mlplat.connect(team["url"], token=made["token"])
    assert ci.principal.name == "sa:ci" and ci.models.list()
    with pytest.raises(PermissionDenied):   # a data scientist cannot mint tokens, even for roles it holds
        ci.tokens.create("ci2", ["data-scientist"], "1h")
    admin.tokens.revoke(made["id"])
    with pytest.raises(AuthenticationError, match="revoked"):
        mlplat.connect(team["url"], token=made["token"]).models.list()


def test_requests_without_a_valid_credential_are_refused_and_audited(team):
    import httpx
    r = httpx.get(team["url"] + "/mlplat/api/models", verify=ssl.create_default_context(cafile=team["ca"]))
    assert r.status_code == 401 and r.json()["error"] == "AuthenticationError"
    forged = team["issuer"].token(groups=["ops"], aud="someone-else")
    r = httpx.get(team["url"] + "/mlplat/api/models", verify=ssl.create_default_context(cafile=team["ca"]), headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401 and "audience" in r.json()["message"]
    assert len(audited(team, "denied", "anonymous", action="auth.login")) >= 2


def test_the_cli_is_the_same_in_team_mode(team, tmp_path):
    token = team["issuer"].token(groups=["ds"], sub="ds-cli")
    env = {"MLPLAT_URL": team["url"], "MLPLAT_TOKEN": token, "MLPLAT_SERVICE_CA_BUNDLE": team["ca"], "MLPLAT_CONFIG": ""}
    out = run_cli("models", "list", "--json", env_extra=env, cwd=tmp_path, check=0)
    assert [m["name"] for m in json.loads(out.stdout)] == ["risk"]
    p = run_cli("models", "promote", "risk", "2", "--alias", "champion", env_extra=env, cwd=tmp_path)
    assert p.returncode != 0 and "may not models:promote" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "mlplat.toml").exists() and not (tmp_path / ".mlplat").exists()   # no local workspace was made
    p = run_cli("models", "list", env_extra={**env, "MLPLAT_SERVICE_CA_BUNDLE": ""}, cwd=tmp_path)
    assert p.returncode == 2 and "not trusted" in p.stderr


def test_the_service_plans_and_runs_a_pipeline_of_its_project_folder_as_the_caller(team, tmp_path):
    """A pipeline file in the service's project folder: a data scientist asks what a run would do, runs it (its step acts
    as them, with a delegated token), and the next plan reuses it; the CLI says the same; nobody climbs out of the folder
    and a viewer neither plans nor runs."""
    from mlplat.errors import PermissionDenied, ValidationError
    folder = team["root"] / "pipes"
    folder.mkdir(exist_ok=True)
    write_notebook(folder / "who.ipynb", "n: int = 1",
                   "import mlplat, mlplat.pipelines as pl\npl.output('who', [mlplat.connect().principal.name, n])")
    write_pipeline(folder, {"name": "team-who", "parameters": {"n": 1},
                            "steps": [{"name": "who", "notebook": "who.ipynb", "parameters": {"n": "{{ params.n }}"}}]})
    ws = as_(team, "ds", sub="ds-pipe")
    first = ws.pipelines.plan("pipes/team-who.yaml", {"n": 2})
    assert [(e["step"], e["action"]) for e in first] == [("who", "run")] and first[0]["reasons"]
    rec = ws.pipelines.run("pipes/team-who.yaml", {"n": 2})
    assert rec.status == "succeeded", rec.steps["who"].error
    assert rec.started_by == ws.principal.name and rec.steps["who"].outputs["who"] == [ws.principal.name, 2]
    again = ws.pipelines.plan("pipes/team-who.yaml", {"n": 2})
    assert [(e["action"], e["cached_from"]) for e in again] == [("reuse", f"{rec.id}/who")]
    env = {"MLPLAT_URL": team["url"], "MLPLAT_TOKEN": team["issuer"].token(groups=["ds"], sub="ds-pipe"),
           "MLPLAT_SERVICE_CA_BUNDLE": team["ca"], "MLPLAT_CONFIG": ""}
    out = run_cli("pipelines", "plan", "pipes/team-who.yaml", "-p", "n=3", "--json", env_extra=env, cwd=tmp_path, check=0)
    assert [(e["action"], e["why"]) for e in json.loads(out.stdout)] == [("run", ["parameters"])]
    with pytest.raises(ValidationError, match="outside the server's root"):
        ws.pipelines.plan("../../etc/pipeline.yaml")
    with pytest.raises(ValidationError, match="runs pipeline files from its project folder"):
        ws.pipelines.start({"name": "inline", "steps": []})
    viewer = as_(team, "view", sub="viewer-pipe")
    with pytest.raises(PermissionDenied, match="may not pipelines:read"):   # a plan reads earlier runs
        viewer.pipelines.plan("pipes/team-who.yaml", {"n": 2})
    with pytest.raises(PermissionDenied, match="may not pipelines:run"):
        viewer.pipelines.start("pipes/team-who.yaml")
    assert audited(team, "denied", viewer.principal.name, "pipelines:run")


def test_plain_http_to_a_network_address_is_refused():
    import mlplat
    from mlplat.errors import ConfigError
    with pytest.raises(ConfigError, match="in clear"):
        mlplat.connect("http://platform.example:8443", token="x")


def test_the_service_logs_one_json_line_per_request_without_credentials(team):
    lines = [json.loads(x) for x in team["log"].read_text().splitlines() if x.startswith("{")]
    assert lines and {"request_id", "principal", "method", "path", "status", "ms"} <= set(lines[-1])
    assert "Bearer" not in team["log"].read_text() and "eyJ" not in team["log"].read_text()


def test_jupyterlab_in_bearer_mode_forwards_each_callers_token(team, tmp_path):
    import httpx
    port, lab_token, root = free_port(), "t0k3n-" + secrets.token_hex(8), tmp_path / "lab"
    root.mkdir()
    env = {"MLPLAT_URL": team["url"], "MLPLAT_SERVICE_CA_BUNDLE": team["ca"], "MLPLAT_CONFIG": "", "MLPLAT_TOKEN": "",
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    log = tmp_path / "lab.log"
    lab = start_process([BIN / "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}", "--ServerApp.port_retries=0",
                         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={lab_token}", f"--ServerApp.root_dir={root}",
                         "--MlplatServer.identity=bearer"], log, env, cwd=root)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/status?token={lab_token}", lab, log)
        def call(method, path, caller, body=None):
            return httpx.request(method, f"http://127.0.0.1:{port}/mlplat/api{path}", json=body, timeout=60,
                                 headers={"Authorization": f"token {lab_token}", "X-Mlplat-Token": caller})
        ds = team["issuer"].token(groups=["ds"], sub="ds-lab")
        me = call("GET", "/me", ds).json()
        assert me["roles"] == ["data-scientist"] and me["principal"] == as_(team, "ds", sub="ds-lab").principal.name
        r = call("POST", "/models/risk/promote", ds, {"version": 2, "alias": "champion"})
        assert r.status_code == 403 and r.json()["error"] == "PermissionDenied"
        assert call("GET", "/me", "not-a-token").status_code == 401
    finally:
        stop_process(lab)


def test_feature_data_moves_through_the_service_as_the_caller(team, tmp_path):
    """A data scientist snapshots a source, applies definitions and builds a training set in the service, as
    themselves, then downloads its rows (audited); an ML engineer loads and pushes online values; each role's
    missing permission is refused and audited under the caller. The client never holds Feast's files."""
    import pandas as pd
    from mlplat.errors import PermissionDenied
    ds = as_(team, "ds", sub="ds-feat")
    t0 = pd.Timestamp("2026-03-01", tz="UTC")
    day = pd.Timedelta(days=1)
    readings = pd.DataFrame({"device_id": [1, 1, 2], "event_timestamp": [t0, t0 + day, t0], "temp": [20.0, 24.0, 30.0]})
    assert ds.features.register_source("readings", readings, classification="internal", timestamp_field="event_timestamp").rows == 3
    applied = ds.features.apply({"entities": [{"name": "device", "join_key": "device_id"}],
                                 "feature_views": [{"name": "sensor", "entities": ["device"], "source": "readings", "ttl": "2d",
                                                    "push": True, "features": [{"name": "temp", "dtype": "float64"}]}]})
    assert "feature_view:sensor@1" in applied.created
    ents = pd.DataFrame({"device_id": [2, 1, 3, 1], "event_timestamp": [t0 + day] * 3 + [t0 + 5 * day], "label": [1, 0, 1, 0]})
    ts = ds.features.training_set(ents, features=["sensor:temp"], name="sensor_ts")
    assert (ts.id, ts.rows) == ("sensor_ts@1", 4)
    rows = ds.features.get_training_set("sensor_ts").to_df()
    assert rows.label.tolist() == [1, 0, 1, 0] and rows.temp.tolist()[:2] == [30.0, 24.0] and rows.temp[2:].isna().all()
    assert str(rows.event_timestamp.dtype).startswith("datetime64") and rows.device_id.tolist() == [2, 1, 3, 1]
    assert audited(team, "success", ds.principal.name, action="training_sets.download")
    assert audited(team, "success", ds.principal.name, action="training_sets.create")
    with pytest.raises(PermissionDenied):      # a data scientist does not write the online store
        ds.features.push("sensor", readings.assign(temp=99.0))
    assert audited(team, "denied", ds.principal.name, "features:push")
    with pytest.raises(PermissionDenied):      # an inference client never downloads training rows
        as_(team, "edge", sub="edge-feat").features.get_training_set("sensor_ts").to_df()
    with pytest.raises(PermissionDenied):
        as_(team, "view", sub="viewer-feat").features.training_set(ents, features=["sensor:temp"], name="sensor_ts")
    mle = as_(team, "mle", sub="mle-feat")
    assert mle.features.materialize(end=t0 + 2 * day).views == ["sensor"]
    assert mle.features.online([{"device_id": 1}, {"device_id": 2}], features=["sensor:temp"])["temp"] == [24.0, 30.0]
    assert mle.features.push("sensor", pd.DataFrame({"device_id": [2], "event_timestamp": [t0 + 2 * day], "temp": [31.5]})).rows == 1
    assert mle.features.online({"device_id": [2]}, features=["sensor:temp"], as_frame=True).temp.tolist() == [31.5]
    assert audited(team, "success", mle.principal.name, action="features.push")
    env = {"MLPLAT_URL": team["url"], "MLPLAT_TOKEN": team["issuer"].token(groups=["ds"], sub="ds-feat"),
           "MLPLAT_SERVICE_CA_BUNDLE": team["ca"], "MLPLAT_CONFIG": ""}
    out = run_cli("features", "training-sets", "--json", env_extra=env, cwd=tmp_path, check=0)
    assert [t["id"] for t in json.loads(out.stdout)] == ["sensor_ts@1"]
