"""Whole-pipeline Argo runs honour the step cache and resume like local runs: reused steps are left out of the
Workflow (their outputs given to the steps after them as values), and a failed run resumes as a new Workflow of the
same run that runs only what did not succeed. Argo's controller is played by the test (see test_pipelines_argo)."""
import json

import pytest
import yaml

from helpers import run_cli, write_notebook, write_pipeline
from test_pipelines_argo import PASSWORD, dag_nodes, kube, kws, play_dag  # noqa: F401 (fixtures)


@pytest.fixture
def spec(tmp_path):
    "`count` (n, with a secret) -> `report_rows` (count's rows, and its own parameter label)."
    src = tmp_path / "src"
    src.mkdir()
    write_notebook(src / "count.ipynb", "n: int = 2", "import os\nassert os.environ['DB_PASSWORD']",
                   "import mlplat.pipelines as pl\npl.output('rows', n * 10)")
    write_notebook(src / "report.ipynb", "rows: int = 0\nlabel = ''", "import mlplat.pipelines as pl\npl.output('line', f'{label}:{rows}')")
    return write_pipeline(src, {
        "name": "churn-cached", "backend": "kubernetes", "parameters": {"n": 2, "label": "a"},
        "steps": [{"name": "count", "notebook": "count.ipynb", "parameters": {"n": "{{ params.n }}"},
                   "secrets": {"DB_PASSWORD": "env:WAREHOUSE_PW"}},
                  {"name": "report_rows", "notebook": "report.ipynb", "depends_on": ["count"],
                   "parameters": {"rows": "{{ steps.count.outputs.rows }}", "label": "{{ params.label }}"}}]})


def newest_workflow(kube, before):
    "The Workflow created since `before` (the names there were), with the values of its Secret."
    (key, wf), = [(k, w) for k, w in kube.argo["workflows"].items() if k[1] not in before]
    secret = kube.secrets.get(("default", f"{key[1]}-secrets"), {}).get("stringData", {})
    return key[1], wf, secret


def play(kube, kws, rec_id, tmp_path, before, failed=None):
    "Argo runs the run's newest Workflow (its pods' own commands), then the record follows it."
    name, wf, secret = newest_workflow(kube, before)
    broke = set() if failed is not None else None
    outputs, _ = play_dag(wf, tmp_path, {(f"{name}-secrets", k): v for k, v in secret.items()}, failed=broke)
    kube.set_workflow_status(name, "Failed" if broke else "Succeeded", nodes=dag_nodes(name, outputs, failed=sorted(broke or ())))
    if failed is not None:
        failed |= broke
    return kws.pipelines.get(rec_id), wf


def test_submitted_runs_reuse_cached_steps(kube, kws, spec, tmp_path):
    first = kws.pipelines.submit(spec, {"n": 2, "label": "a"})
    done, wf = play(kube, kws, first.id, tmp_path, set())
    assert done.status == "succeeded" and all(s.cache_key for s in done.steps.values())   # keyed as the pods ran them
    assert done.steps["report_rows"].parameters == {"rows": 20, "label": "a"}
    # only the last step's parameter changed: the plan and the Workflow agree that only it runs
    plan = {e["step"]: e for e in kws.pipelines.plan(spec, {"n": 2, "label": "b"})}
    assert plan["count"]["cached_from"] == f"{first.id}/count" and plan["report_rows"]["action"] == "run"
    before = {k[1] for k in kube.argo["workflows"]}
    second = kws.pipelines.submit(spec, {"n": 2, "label": "b"})
    name, wf, secret = newest_workflow(kube, before)   # accepted by the double: valid against the Workflow CRD
    dag = wf["spec"]["templates"][0]["dag"]["tasks"]
    assert [(t["name"], t.get("dependencies")) for t in dag] == [("report-rows", None)] and len(wf["spec"]["templates"]) == 2
    args = wf["spec"]["templates"][1]["container"]["args"]
    assert args[args.index("--upstream") + 1] == 'count={"rows": 20}'
    assert "count.DB_PASSWORD" not in secret and PASSWORD not in json.dumps(wf)   # a reused step needs no secret
    count = second.steps["count"]
    assert (count.status, count.cached_from, count.attempts, count.outputs) == ("succeeded", f"{first.id}/count", 0, {"rows": 20})
    done, _ = play(kube, kws, second.id, tmp_path, before)
    assert done.status == "succeeded" and done.steps["report_rows"].outputs == {"line": "b:20"}
    assert kws.pipelines.notebook(second.id, "count")   # the reused executed notebook is the run's own copy
    audit = [e for e in kws.governance.audit.records() if e["action"] == "pipeline.run"][-1]
    assert audit["details"]["cached_from"] == {"count": f"{first.id}/count"} and "secrets_used" not in audit["details"]
    # everything reused: no Workflow at all, the run has succeeded at once
    before = {k[1] for k in kube.argo["workflows"]}
    third = kws.pipelines.submit(spec, {"n": 2, "label": "b"})
    assert third.status == "succeeded" and {k[1] for k in kube.argo["workflows"]} == before
    assert third.steps["report_rows"].cached_from == f"{second.id}/report_rows"
    # --no-cache runs every step; so does a step's own cache: false, and the step after it (keyed only once it ran)
    rec = json.loads(run_cli("pipelines", "submit", spec, "-p", "n=2", "-p", "label=b", "--no-cache", "--json", check=0).stdout)
    _, wf, _ = newest_workflow(kube, before)
    assert [t["name"] for t in wf["spec"]["templates"][0]["dag"]["tasks"]] == ["count", "report-rows"]
    assert all(s["cached_from"] is None for s in rec["steps"])
    doc = yaml.safe_load(spec.read_text())
    doc["steps"][0]["cache"] = False
    spec.write_text(yaml.safe_dump(doc))
    before = {k[1] for k in kube.argo["workflows"]}
    kws.pipelines.submit(spec, {"n": 2, "label": "b"})
    _, wf, _ = newest_workflow(kube, before)
    assert [t["name"] for t in wf["spec"]["templates"][0]["dag"]["tasks"]] == ["count", "report-rows"]


def test_resume_a_failed_submitted_run(kube, kws, spec, tmp_path):
    report = spec.parent / "report.ipynb"
    write_notebook(report, "rows: int = 0\nlabel = ''", "raise RuntimeError('the report is broken')")
    rec = kws.pipelines.submit(spec, {"n": 3, "label": "x"})
    failed = set()
    done, _ = play(kube, kws, rec.id, tmp_path, set(), failed)
    assert failed == {"report-rows"} and done.status == "failed"
    assert (done.steps["count"].status, done.steps["report_rows"].status) == ("succeeded", "failed")
    count_before = done.steps["count"]
    # the cause is fixed; the resume is a new Workflow of the same run with only what did not succeed
    write_notebook(report, "rows: int = 0\nlabel = ''", "import mlplat.pipelines as pl\npl.output('line', f'{label}:{rows}')")
    before = {k[1] for k in kube.argo["workflows"]}
    resumed = kws.pipelines.resume(rec.id)
    assert resumed.id == rec.id and resumed.status == "running"
    name, wf, _ = newest_workflow(kube, before)
    assert name == f"{rec.id}-r1" and [t["name"] for t in wf["spec"]["templates"][0]["dag"]["tasks"]] == ["report-rows"]
    args = wf["spec"]["templates"][1]["container"]["args"]
    assert args[args.index("--upstream") + 1] == 'count={"rows": 30}'
    with pytest.raises(Exception, match="still running"):
        kws.pipelines.resume(rec.id)
    done, _ = play(kube, kws, rec.id, tmp_path, before)
    assert done.status == "succeeded" and done.steps["report_rows"].outputs == {"line": "x:30"}
    count = done.steps["count"]   # not run again: the same record, notebook and times
    assert (count.attempts, count.notebook, count.started_at.replace(tzinfo=None), count.cached_from) == (
        count_before.attempts, count_before.notebook, count_before.started_at.replace(tzinfo=None), None)
    assert json.loads((kws.config.home / "pipelines" / rec.id / "workflow.json").read_text())["earlier"] == [rec.id]
    actions = [(e["action"], e["outcome"]) for e in kws.governance.audit.records() if e["resource"] == f"pipeline_run:{rec.id}"
               and e["action"] in ("pipeline.run", "pipeline.resume")]
    assert actions == [("pipeline.run", "failure"), ("pipeline.resume", "success")]
    assert b"the report is broken" not in kws.pipelines.notebook(rec.id, "report_rows")
