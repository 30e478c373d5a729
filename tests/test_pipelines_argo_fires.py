"""A schedule's CronWorkflow, applied with its credential, and its fires played as Argo's controller plays them: the
Workflow made from the CronWorkflow's workflowSpec, each task's pod running its own command here. A fire acts as the
schedule's creator, is recorded in mlplat's run store like any run, and is refused (recorded, audited, notified) once
the creator may no longer run the pipeline."""
import json

import pytest

from helpers import configure, run_cli, write_notebook, write_pipeline
from test_pipelines_argo import dag_nodes, kube, kws, play_dag  # noqa: F401 (fixtures)
from mlplat.errors import AuthenticationError, ConflictError, NotFoundError

WHO = ("import os, mlplat\nimport mlplat.pipelines as pl\n"
       "pl.output('who', [mlplat.connect().principal.name, 'MLPLAT_SCHEDULE_CREDENTIAL' in os.environ])\npl.output('n10', n * 10)")


def argo_fires(kube, cron, unix_time, slot):
    "What Argo's controller does at a slot: a Workflow made from the CronWorkflow's workflowSpec, through the API."
    name = f"{cron['metadata']['name']}-{unix_time}"
    wf = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
          "metadata": {"name": name, "labels": cron["spec"]["workflowMetadata"]["labels"],
                       "annotations": {"workflows.argoproj.io/scheduled-time": slot}},
          "spec": cron["spec"]["workflowSpec"]}
    code, made, _ = kube.route("POST", "/apis/argoproj.io/v1alpha1/namespaces/default/workflows", {}, wf)
    assert code == 201, made   # valid against the Workflow CRD
    return name, made


def test_cronworkflow_fires_act_as_the_creator_and_are_recorded(kube, kws, home, tmp_path, webhook):
    import mlplat
    from mlplat.pipelines.argo_fires import fire, step_token
    url, got = webhook
    configure(home, url, ["schedule.skipped", "pipeline.succeeded"])
    toml = home / "mlplat.toml"
    toml.write_text(toml.read_text().replace("[rbac.bindings]", '[rbac.bindings]\n"carol" = ["data-scientist"]'))
    src = tmp_path / "src"
    src.mkdir()
    write_notebook(src / "who.ipynb", "n: int = 1", WHO)
    spec = write_pipeline(src, {"name": "nightly-who", "backend": "kubernetes", "parameters": {"n": 1},
                                "steps": [{"name": "who", "notebook": "who.ipynb", "parameters": {"n": "{{ params.n }}"}},
                                          {"name": "again", "notebook": "who.ipynb", "depends_on": ["who"],
                                           "parameters": {"n": "{{ steps.who.outputs.n10 }}"}}]})
    carol = mlplat.connect(home).as_user("carol")
    carol.schedules.add("nightly", spec, "0 2 * * *", {"n": 4})
    # an admin applies it: the CronWorkflow and the Secret with the schedule's credential, never the credential in it
    applied = run_cli("schedule", "cronworkflow", "nightly", "--apply", check=0)
    assert "the Secret with the schedule's credential" in applied.stderr
    (_, cron_name), cron = next(iter(kube.argo["cronworkflows"].items()))
    secret = kube.secrets[("default", f"{cron_name}-credential")]
    credential = secret["stringData"]["credential"]
    assert secret["metadata"]["ownerReferences"][0]["uid"] == cron["metadata"]["uid"] and credential not in json.dumps(cron)
    with pytest.raises(AuthenticationError, match="it does not sign in"):
        kws.authenticate(credential)
    secrets = {(f"{cron_name}-credential", "credential"): credential}

    # a fire, as Argo runs it: the first task records the run as carol, the steps act as carol through the run's token
    name, wf = argo_fires(kube, cron, 1796263200, "2026-12-03T02:00:00Z")
    outputs, logs = play_dag(wf, tmp_path, secrets, scheduled="2026-12-03T02:00:00Z")
    assert f"run {name} of schedule nightly recorded; its steps act as carol" in logs["mlplat-fire"]
    assert outputs["who"] == {"who": ["carol", False], "n10": 40} and outputs["again"] == {"who": ["carol", False], "n10": 400}
    kube.set_workflow_status(name, "Running", nodes=dag_nodes(name, {}))
    listed = json.loads(run_cli("pipelines", "list", "--json", check=0).stdout)
    assert [(r["id"], r["status"], r["started_by"]) for r in listed] == [(name, "running", "carol")]
    kube.set_workflow_status(name, "Succeeded", nodes=dag_nodes(name, outputs))
    shown = json.loads(run_cli("pipelines", "show", name, "--json", check=0).stdout)
    assert shown["status"] == "succeeded" and [s["backend"] for s in shown["steps"]] == ["kubernetes", "kubernetes"]
    assert {s["name"]: s["outputs"] for s in shown["steps"]}["again"] == {"who": ["carol", False], "n10": 400}
    assert "schedule:nightly" in json.dumps(kws.lineage.of(f"pipeline_run:{name}"))
    fired, = kws.schedules.history("nightly")
    assert (fired["slot"], fired["status"], fired["run_id"], fired["scheduler"]) == ("2026-12-03T02:00:00Z", "succeeded", name, f"argo:default/{name}")
    records = kws.audit.records(None)
    assert [(r["principal"], r["outcome"]) for r in records if r["action"] == "pipeline.run"] == [("carol", "success")]
    assert ("carol", "success") in [(r["principal"], r["outcome"]) for r in records if r["action"] == "schedule.fire"]
    # the same slot is not fired twice; the run's token is gone with the run
    with pytest.raises(ConflictError, match="fired already"):
        fire(kws, credential, "nightly", f"{name}-again", "2026-12-03T02:00:00Z", "default/x")
    with pytest.raises(AuthenticationError, match="has no live token"):
        step_token(kws, credential, "nightly", name, "who")

    # carol loses her role: the next fire is refused before any step runs — recorded, audited, notified
    toml.write_text(toml.read_text().replace('"carol" = ["data-scientist"]\n', ""))
    name2, wf2 = argo_fires(kube, cron, 1796349600, "2026-12-04T02:00:00Z")
    failed = set()
    outputs, logs = play_dag(wf2, tmp_path, secrets, failed=failed, scheduled="2026-12-04T02:00:00Z")
    assert failed == {"mlplat-fire"} and outputs == {} and "the fire is refused" in logs["mlplat-fire"]
    with pytest.raises(NotFoundError):
        kws.pipelines.get(name2)
    refused = kws.schedules.history("nightly")[0]
    assert refused["status"] == "refused" and "'carol' (roles: none) may not pipelines:run" in refused["detail"]
    denied = [r for r in kws.audit.records(None) if r["action"] == "schedule.fire" and r["outcome"] == "denied"]
    assert [r["principal"] for r in denied] == ["carol"] and denied[0]["details"]["slot"] == "2026-12-04T02:00:00Z"
    assert [e["details"]["schedule"] for e in got if e["event"] == "schedule.skipped"] == ["nightly"]
    # a step's pod of another run cannot use the credential; a removed schedule's credential is revoked
    with pytest.raises(AuthenticationError, match="was not fired by schedule nightly"):
        step_token(kws, credential, "nightly", name2, "who")
    kws.schedules.remove("nightly")
    with pytest.raises(AuthenticationError, match="revoked"):
        fire(kws, credential, "nightly", "x", "2026-12-05T02:00:00Z", "default/x")
