"""A schedule's CronWorkflow in team mode (`kubernetes.service_url`): no pod sees the workspace home — the fire's task
mounts none of it, a step only its run's folder and its notebooks' folder — and every pod is a client of `mlplat
server`. The fires are played as Argo's controller plays them (see tests/test_pipelines_argo_fires.py), each pod's
command run here with only the service's URL and the Secret's credential in its environment: the service records the
run as the schedule's creator, the steps' kernels act as the creator through the service, and once the creator's role
is gone the next fire is refused, audited and notified."""
import json
from pathlib import Path

import pytest
import yaml

from helpers import BIN, configure, free_port, start_process, stop_process, wait_http, write_notebook, write_pipeline
from test_pipelines_argo import argo_problems, dag_nodes, kube, kws, play_dag  # noqa: F401 (fixtures)
from test_pipelines_argo_fires import argo_fires

pytestmark = pytest.mark.services

WHO = ("import os, mlplat\nimport mlplat.pipelines as pl\nws = mlplat.connect()\n"
       "pl.output('who', [ws.mode, ws.principal.name, list(ws.principal.roles), sorted(k for k in os.environ if k.startswith('MLPLAT_') "
       "and k not in ('MLPLAT_PIPELINE_RUN', 'MLPLAT_PIPELINE_STEP', 'MLPLAT_SECRET_NAMES', 'MLPLAT_SCHEDULE'))])\n"
       "pl.output('runs', [r.id for r in ws.pipelines.list()])\npl.output('n10', n * 10)")


def home_mounts(template, home):
    "The template's mounts of the home's claim, as (path in the pod, subPath, read-only)."
    return [(m["mountPath"], m.get("subPath"), m.get("readOnly", False)) for m in template["container"].get("volumeMounts", [])
            if m["name"] == "mlplat-home"]


@pytest.fixture
def service(kube, kws, home, monkeypatch, tmp_path, webhook):
    "`mlplat server` on 127.0.0.1 over the test's SQLite workspace, named as the pods' `kubernetes.service_url`."
    url, got = webhook
    configure(home, url, ["schedule.skipped"])
    toml = home / "mlplat.toml"
    toml.write_text(toml.read_text().replace("[rbac.bindings]", '[rbac.bindings]\n"carol" = ["data-scientist"]'))
    port = free_port()
    monkeypatch.setenv("MLPLAT_KUBERNETES_SERVICE_URL", f"http://127.0.0.1:{port}")   # for the service's own configuration
    log = tmp_path / "server.log"
    proc = start_process([BIN / "mlplat", "server", "--port", port], log, cwd=tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready", proc, log)
        import mlplat
        yield {"url": f"http://127.0.0.1:{port}", "toml": toml, "notified": got, "log": log, "ws": mlplat.connect(home)}
    finally:
        stop_process(proc)


def test_team_mode_pods_never_see_the_home_and_fire_through_the_service(service, kube, home, tmp_path):
    import mlplat
    kws = service["ws"]   # the operator's, in process: as the service's mlplat.toml reads now
    from mlplat.pipelines.argo_workflow import pipeline_workflow
    src = home / "projects" / "nightly"   # on the claim: the steps mount this folder, read-only
    src.mkdir(parents=True)
    write_notebook(src / "who.ipynb", "n: int = 1", WHO)
    spec = write_pipeline(src, {"name": "nightly-who", "backend": "kubernetes", "parameters": {"n": 1},
                                "steps": [{"name": "who", "notebook": "who.ipynb", "parameters": {"n": "{{ params.n }}"}},
                                          {"name": "again", "notebook": "who.ipynb", "depends_on": ["who"],
                                           "parameters": {"n": "{{ steps.who.outputs.n10 }}"}}]})
    mlplat.connect(home).as_user("carol").schedules.add("nightly", spec, "0 2 * * *", {"n": 4})
    from mlplat.pipelines.argo_fires import ScheduleOnArgo
    ScheduleOnArgo(kws).apply("nightly")
    (_, cron_name), cron = next(iter(kube.argo["cronworkflows"].items()))
    assert argo_problems(cron, "cronworkflows") == []
    credential = kube.secrets[("default", f"{cron_name}-credential")]["stringData"]["credential"]

    # what the pods may see: the fire nothing of the home, a step its run's folder and its notebooks' folder
    guarded = [home / "keys", home / "platform.db", home / "mlplat.toml"]
    submitted, _ = pipeline_workflow(kws, spec, {"n": 2})
    assert argo_problems(submitted) == []
    for wf in (cron["spec"]["workflowSpec"], submitted["spec"]):
        for t in wf["templates"][1:]:
            env = {e["name"]: e.get("value") for e in t["container"]["env"]}
            assert env["MLPLAT_URL"] == service["url"] and "MLPLAT_HOME" not in env and "MLPLAT_CONFIG" not in env, env
            for path, sub, read_only in home_mounts(t, home):
                assert sub and Path(path) != home and path == str(home / sub), (path, sub)
                assert not any(Path(g).is_relative_to(path) or Path(path).is_relative_to(g) for g in guarded), path
                assert read_only or sub.startswith("pipelines/"), (path, sub)
    fire_t, who_t = (next(t for t in cron["spec"]["workflowSpec"]["templates"] if t["name"] == n) for n in ("mlplat-fire", "who"))
    assert home_mounts(fire_t, home) == []
    assert home_mounts(who_t, home) == [(str(src), "projects/nightly", True), (f"{home}/pipelines/{{{{workflow.name}}}}",
                                                                               "pipelines/{{workflow.name}}", False)]

    # a fire, played: its pods hold the service's URL and the schedule's credential only
    secrets = {(f"{cron_name}-credential", "credential"): credential}
    name, wf = argo_fires(kube, cron, 1796263200, "2026-12-03T02:00:00Z")
    outputs, logs = play_dag(wf, tmp_path, secrets, scheduled="2026-12-03T02:00:00Z")
    assert f"run {name} of schedule nightly recorded; its steps act as carol" in logs["mlplat-fire"]
    team = ["team", "carol", ["data-scientist"], ["MLPLAT_TOKEN", "MLPLAT_URL"]]   # no home, no credential left in the kernel
    assert outputs["who"]["who"] == team and outputs["again"] == {"who": team, "runs": [name], "n10": 400}
    rec = kws.pipelines.get(name)
    assert (rec.status, rec.started_by) == ("running", "carol")
    kube.set_workflow_status(name, "Succeeded", nodes=dag_nodes(name, outputs))
    assert kws.pipelines.get(name).status == "succeeded"
    fired, = kws.schedules.history("nightly")
    assert (fired["status"], fired["run_id"], fired["scheduler"]) == ("succeeded", name, f"argo:default/{name}")
    records = kws.audit.records(None)
    assert ("carol", "success") in [(r["principal"], r["outcome"]) for r in records if r["action"] == "schedule.fire"]
    assert [(r["principal"], r["outcome"]) for r in records if r["action"] == "pipeline.run"] == [("carol", "success")]

    # the credential is exchanged only for the runs of its schedule; a wrong one is refused and audited
    from mlplat.errors import AuthenticationError
    from mlplat.service.client import ApiClient
    with pytest.raises(AuthenticationError, match="has no live token"):   # the run has ended, and its token with it
        ApiClient(service["url"], credential).post(f"/schedules/nightly/fires/{name}/tokens", {"step": "who"})
    with pytest.raises(AuthenticationError, match="not valid"):
        ApiClient(service["url"], credential[:-4] + "AAAA").post("/schedules/nightly/fires", {"run": "x", "slot": "2026-12-03T02:00:00Z"})
    with pytest.raises(AuthenticationError, match="does not sign in"):   # and it is no bearer token for anything else
        ApiClient(service["url"], credential).get("/me")

    # carol loses her role: the service refuses the next fire before any step runs — recorded, audited, notified
    toml = service["toml"]
    toml.write_text(toml.read_text().replace('"carol" = ["data-scientist"]\n', ""))
    name2, wf2 = argo_fires(kube, cron, 1796349600, "2026-12-04T02:00:00Z")
    failed = set()
    outputs, logs = play_dag(wf2, tmp_path, secrets, failed=failed, scheduled="2026-12-04T02:00:00Z")
    assert failed == {"mlplat-fire"} and outputs == {} and "the fire is refused" in logs["mlplat-fire"]
    assert name2 not in [r.id for r in kws.pipelines.list()]
    refused = kws.schedules.history("nightly")[0]
    assert refused["status"] == "refused" and "'carol' (roles: none) may not pipelines:run" in refused["detail"]
    denied = [r for r in kws.audit.records(None) if r["action"] == "schedule.fire" and r["outcome"] == "denied"]
    assert sorted((r["principal"], r["details"]["slot"]) for r in denied) == [("anonymous", "2026-12-03T02:00:00Z"),   # the forged one
                                                                               ("carol", "2026-12-04T02:00:00Z")]
    assert [e["details"]["schedule"] for e in service["notified"] if e["event"] == "schedule.skipped"] == ["nightly"]
    assert "/schedules/nightly/fires" in service["log"].read_text()   # the service, not the pod, decided
    assert yaml.safe_dump(cron).count(credential) == 0
