"""Under JupyterHub, each user's server acts as that hub user: a real hub (configurable-http-proxy from npm, two users,
local-process spawner) whose single-user servers reach `mlplat server` in team mode with their own hub token, and a
platform service that asks the hub who owns it (`identity.provider = "jupyterhub"`)."""
import json
import secrets
import shutil
import time
from pathlib import Path

import httpx
import pytest

from helpers import BIN, REPO, free_port, start_process, stop_process, wait_http

pytestmark = pytest.mark.services

CHP = REPO / ".cache" / "chp" / "node_modules" / ".bin" / "configurable-http-proxy"


def hub_config(folder: Path, ports: dict, admin_token: str, service_url: str) -> Path:
    homes = folder / "homes"
    for user in ("ada", "grace"):
        (homes / user).mkdir(parents=True)
    cfg = folder / "jupyterhub_config.py"
    cfg.write_text(f"""
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {ports["proxy"]}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {ports["hub"]}
c.JupyterHub.db_url = "sqlite:///{folder}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{folder}/cookie_secret"
c.JupyterHub.pid_file = "{folder}/hub.pid"
c.ConfigurableHTTPProxy.command = ["{CHP}"]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{ports["proxy_api"]}"
c.ConfigurableHTTPProxy.pid_file = "{folder}/proxy.pid"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {{"ada", "grace"}}
c.JupyterHub.load_groups = {{"ds": {{"users": ["ada"]}}, "view": {{"users": ["grace"]}}}}
c.JupyterHub.services = [{{"name": "test-admin", "api_token": "{admin_token}"}}]
c.JupyterHub.load_roles = [{{"name": "test-admin", "scopes": ["admin:users", "admin:servers", "tokens", "access:servers"],
                            "services": ["test-admin"]}}]
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{homes}/{{username}}"
c.Spawner.cmd = ["{BIN / "jupyterhub-singleuser"}"]
c.Spawner.args = ["--allow-root", "--ServerApp.port_retries=0"]
c.Spawner.environment = {{"MLPLAT_URL": "{service_url}", "MLFLOW_DISABLE_TELEMETRY": "true"}}
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 90
""")
    return cfg


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    if not CHP.exists():
        pytest.skip("configurable-http-proxy is not installed (make test installs it with npm into .cache/chp)")
    folder = tmp_path_factory.mktemp("hub")
    ports = {k: free_port() for k in ("proxy", "proxy_api", "hub", "service")}
    admin = secrets.token_hex(16)
    work = folder / "platform"
    work.mkdir()
    (work / "mlplat.toml").write_text(f"""
[workspace]
home = ".mlplat"
[identity]
provider = "jupyterhub"
jupyterhub_api_url = "http://127.0.0.1:{ports["hub"]}/hub/api"
[identity.role_map]
ds = "data-scientist"
view = "viewer"
""")
    env = {"MLPLAT_CONFIG": str(work / "mlplat.toml")}
    service_log, hub_log = folder / "service.log", folder / "hub.log"
    service = start_process([BIN / "mlplat", "server", "--port", ports["service"]], service_log, env=env, cwd=work)
    hub = start_process([BIN / "jupyterhub", "-f", hub_config(folder, ports, admin, f"http://127.0.0.1:{ports['service']}")],
                        hub_log, env={"MLPLAT_CONFIG": "", "PATH": f"{BIN}:{Path(shutil.which('node')).parent}"}, cwd=folder)
    try:
        wait_http(f"http://127.0.0.1:{ports['service']}/health/ready", service, service_log)
        wait_http(f"http://127.0.0.1:{ports['proxy']}/hub/api/", hub, hub_log)
        end = time.time() + 60   # the proxy answers 404 until the hub has added its own route
        while httpx.get(f"http://127.0.0.1:{ports['proxy']}/hub/api/").status_code != 200:
            assert time.time() < end and hub.poll() is None, hub_log.read_text()[-3000:]
            time.sleep(0.3)
        api = httpx.Client(base_url=f"http://127.0.0.1:{ports['proxy']}/hub/api", headers={"Authorization": f"token {admin}"},
                           timeout=60)
        for user in ("ada", "grace"):
            assert api.post(f"/users/{user}/server").status_code in (201, 202)
        end = time.time() + 120
        while not all(api.get(f"/users/{u}").json()["servers"].get("", {}).get("ready") for u in ("ada", "grace")):
            assert time.time() < end, hub_log.read_text()[-3000:]
            time.sleep(0.5)
        tokens = {u: api.post(f"/users/{u}/tokens", json={"note": "test", "expires_in": 600}).json()["token"]
                  for u in ("ada", "grace")}
        yield {"proxy": f"http://127.0.0.1:{ports['proxy']}", "tokens": tokens, "api": api, "work": work,
               "service_log": service_log}
        for user in ("ada", "grace"):
            api.delete(f"/users/{user}/server")
        end = time.time() + 30
        while time.time() < end and any(api.get(f"/users/{u}").json()["servers"] for u in ("ada", "grace")):
            time.sleep(0.3)
    finally:
        stop_process(hub)
        stop_process(service)
        stop_proxy(folder / "proxy.pid")


def stop_proxy(pid_file: Path):
    "The hub starts configurable-http-proxy in a session of its own; end it if the hub did not."
    import os
    import signal
    try: os.kill(int(pid_file.read_text()), signal.SIGTERM)
    except (OSError, ValueError): pass


def call(hub, user, path, as_user=None, method="GET", body=None):
    "A call to `user`'s single-user server's mlplat API, with the hub token of `as_user` (default: the same user)."
    token = hub["tokens"][as_user or user]
    return httpx.request(method, f"{hub['proxy']}/user/{user}/mlplat/api{path}", json=body, timeout=60,
                         headers={"Authorization": f"token {token}"}, follow_redirects=False)


def test_each_users_server_acts_as_that_hub_user(hub):
    ada, grace = call(hub, "ada", "/me"), call(hub, "grace", "/me")
    assert ada.status_code == 200, ada.text
    assert (ada.json()["principal"], ada.json()["roles"]) == ("hub:ada", ["data-scientist"])
    assert (grace.json()["principal"], grace.json()["roles"]) == ("hub:grace", ["viewer"])


def test_one_hub_user_cannot_use_anothers_server(hub):
    r = call(hub, "grace", "/me", as_user="ada")
    assert r.status_code in (302, 403)   # the hub sends ada away from grace's server


def test_refusals_come_from_the_platform_service_and_name_the_hub_user(hub):
    from mlplat.config import Config
    from mlplat.governance.identity import Principal
    from mlplat.workspace import Workspace
    r = call(hub, "ada", "/tokens", method="POST", body={"name": "mine", "roles": ["admin"], "expires": "1d"})
    assert r.status_code == 403 and r.json()["error"] == "PermissionDenied", r.text
    ops = Workspace(Config.load(env={"MLPLAT_CONFIG": str(hub["work"] / "mlplat.toml")}), Principal("operator", ("admin",)))
    denied = [a for a in ops.audit.records(limit=50) if a["outcome"] == "denied" and a["principal"] == "hub:ada"]
    assert denied and denied[0]["action"] in ("tokens.create", "tokens:create")
    lines = [json.loads(x) for x in hub["service_log"].read_text().splitlines() if x.startswith("{")]
    assert {"hub:ada", "hub:grace"} <= {x["principal"] for x in lines}
