"""Budgets, quotas, spot and Kueue (issue 19, second increment): a submit over budget is refused with what was spent
and what to do, or queued; an admin overrides only with MFA, audited; 80% and 100% of a budget notify a local webhook
once each; the estimate is the median of earlier runs; the spot discount; and the Kueue objects `mlplat cost kueue`
renders validate against Kueue's CRDs, with the queue label on a rendered TrainJob and Argo Workflow."""
import json
import statistics

import jsonschema
import pytest
import yaml

from helpers import crd, crd_schema, run_cli, tiny_job, undeclared_fields, wait_for, write_notebook, write_pipeline
from mlplat.errors import BudgetExceeded, PermissionDenied

KUEUE = {"ResourceFlavor": "kueue.x-k8s.io_resourceflavors.yaml", "ClusterQueue": "kueue.x-k8s.io_clusterqueues.yaml",
         "LocalQueue": "kueue.x-k8s.io_localqueues.yaml", "WorkloadPriorityClass": "kueue.x-k8s.io_workloadpriorityclasses.yaml"}
TOML = """[rbac.bindings]
bo = ["admin"]
ada = ["data-scientist"]
cy = ["data-scientist"]
[rbac.teams]
ada = "vision"
cy = "vision"
[cost]
cpu_hour = 3.6
spot_discount = 0.6
over_budget = "{over}"
[cost.budgets]
users = {{ada = 1.0, bo = 0.5}}
teams = {{vision = 10.0}}
[cost.quotas.vision]
gpus = 8
cpus = 64
memory = "256Gi"
spot = {{gpus = 16, cpus = 128, memory = "512Gi"}}
namespaces = ["ml-vision", "default"]
[cost.quotas.nlp]
gpus = 2
[cost.priority_classes]
high = 1000
low = 10
[kubernetes]
image = "registry.local/mlplat:0.1"
home_claim = "mlplat-home"
[notifications]
events = ["cost.budget_80", "cost.budget_100"]
webhooks = []
"""


def workspace(home, over="refuse", webhook=None):
    """bo (admin) and ada, cy (team vision); budgets: ada 1.00, bo 0.50, vision 10.00 a month; a CPU-second costs 0.001;
    budget notices go to `webhook`."""
    home.mkdir(parents=True, exist_ok=True)
    text = TOML.format(over=over)
    (home / "mlplat.toml").write_text(text.replace("webhooks = []", f'webhooks = ["{webhook}"]') if webhook else text)
    import mlplat
    return mlplat.connect(home, user="bo")


def spend(ws, who: str, cpu_seconds: float, subject="earlier"):
    "Use recorded for `who` as a job attempt's supervisor records it (a CPU-second costs 0.001)."
    from mlplat.cost.core import Attribution, record_usage
    from mlplat.cost.usage import Usage
    return record_usage(ws, Usage(wall_seconds=1, cpu_seconds=cpu_seconds), Attribution("job", subject, who, 1))


def with_mfa(ws, name):
    "The workspace acting as `name` signed in with MFA (the token's amr claim), as an identity provider would say."
    from mlplat.governance.identity import Principal
    from mlplat.workspace import Workspace
    return Workspace(ws.config, Principal(name, claims={"amr": ["pwd", "mfa"]}))


def test_a_submit_over_budget_is_refused_with_what_was_spent(home, tmp_path, monkeypatch):
    bo = workspace(home)
    ada = bo.as_user("ada")
    spend(bo, "ada", 900)                           # 0.90 of her 1.00
    spec = tiny_job(tmp_path, monkeypatch, timeout="10m")   # one core for 10 minutes: 0.60
    with pytest.raises(BudgetExceeded) as e:
        ada.jobs.submit(spec)
    assert "job 'tiny' would cost about 0.60 USD (resources x timeout" in e.value.message
    assert "user 'ada' has spent 0.90 of its 1.00 USD budget" in e.value.message and "0.10 left" in e.value.message
    assert "--override-budget" in e.value.hint and "cost.budgets" in e.value.hint
    assert ada.jobs.list() == []                    # nothing was recorded or launched
    [denied] = [r for r in bo.audit.records(10) if r["action"] == "cost.admit"]
    assert (denied["principal"], denied["outcome"], denied["resource"]) == ("ada", "denied", "job:tiny")
    # the CLI says the same, without a traceback, and exits 3 (refused)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    out = run_cli("jobs", "submit", tmp_path / "tiny.yaml", "--user", "ada")
    assert out.returncode == 3 and "0.90 of its 1.00 USD budget" in out.stderr and "Traceback" not in out.stderr
    # the same run of a pipeline is refused too: each step counts an hour without a timeout (3.60)
    write_notebook(tmp_path / "nb.ipynb", "x = 1", "print(x)")
    p = write_pipeline(tmp_path, {"name": "nightly", "steps": [{"name": "a", "notebook": "nb.ipynb"}]})
    with pytest.raises(BudgetExceeded, match="pipeline 'nightly' would cost about 3.60 USD"):
        ada.pipelines.run(p)
    shown = json.loads(run_cli("cost", "budgets", "--user", "ada", "--json", check=0).stdout)
    assert [(b["scope"], b["name"], b["spent"], b["budget"]) for b in shown] == [("user", "ada", 0.9, 1.0), ("team", "vision", 0.9, 10.0)]


@pytest.mark.slow   # a real job held, then run: about 35 s here
def test_over_budget_with_queue_waits_until_the_budget_allows_it(home, tmp_path, monkeypatch):
    bo = workspace(home, over="queue")
    ada = bo.as_user("ada")
    spend(bo, "ada", 900)
    rec = ada.jobs.submit(tiny_job(tmp_path, monkeypatch, timeout="10m"))
    assert rec.spec["budget"]["action"] == "queued"
    wait_for(lambda: "waiting for budget" in (ada.jobs.status(rec.id).message or ""), 60, "the job to wait for its budget")
    assert ada.jobs.status(rec.id).state == "queued"
    # the operator raises ada's budget: the waiting job starts and runs
    (home / "mlplat.toml").write_text(TOML.format(over="queue").replace("ada = 1.0", "ada = 5.0"))
    done = ada.jobs.wait(rec.id, timeout=240)
    assert done.state == "succeeded", "".join(ada.jobs.logs(rec.id))


def test_an_admin_overrides_with_mfa_only_and_is_audited(home, tmp_path, monkeypatch):
    bo = workspace(home)
    spend(bo, "bo", 450)                            # 0.45 of his 0.50
    spec = tiny_job(tmp_path, monkeypatch, timeout="10m")
    with pytest.raises(PermissionDenied, match="cost.override needs multi-factor authentication"):
        bo.jobs.submit(spec, override_budget=True)
    spend(bo, "ada", 900)
    with pytest.raises(PermissionDenied, match="cost:override"):     # MFA, but not an admin
        with_mfa(bo, "ada").jobs.submit(spec, override_budget=True)
    rec = with_mfa(bo, "bo").jobs.submit(spec, override_budget=True, wait=True, timeout=240)
    assert rec.state == "succeeded" and rec.spec["budget"]["action"] == "overridden"
    records = [r for r in bo.audit.records(50) if r["action"] == "cost.override"]
    assert [(r["principal"], r["outcome"]) for r in records] == [("bo", "success"), ("ada", "denied"), ("bo", "denied")]
    assert "0.45 of its 0.50 USD budget" in json.dumps(records[0]["details"])


def test_80_and_100_percent_notify_once_per_budget(home, webhook):
    url, got = webhook
    bo = workspace(home, webhook=url)
    spend(bo, "ada", 500)                           # 0.50: nothing yet
    spend(bo, "ada", 350, "j2")                     # 0.85: ada's 80%
    spend(bo, "cy", 7200, "j3")                     # vision at 8.05: its 80% (cy has no budget of his own)
    spend(bo, "ada", 200, "j4")                     # 1.05: ada's 100%; vision 8.25
    spend(bo, "ada", 300, "j5")                     # more of the same: nothing new
    wait_for(lambda: len(got) >= 3, 10, "three notices")
    seen = [(g["event"], g["details"]["scope"], g["details"]["name"]) for g in got]
    assert seen == [("cost.budget_80", "user", "ada"), ("cost.budget_80", "team", "vision"), ("cost.budget_100", "user", "ada")]
    assert got[0]["details"]["budget"] == 1.0 and "spent 0.85 of its 1.00 USD budget" in got[0]["subject"]


@pytest.mark.slow   # three real jobs: about a minute
def test_the_estimate_is_the_median_of_earlier_runs(home, tmp_path, monkeypatch):
    from mlplat.cost.admit import job_estimate, pipeline_estimate
    from mlplat.jobs.spec import Hardware, TrainingJob
    bo = workspace(home)
    spec = tiny_job(tmp_path, monkeypatch, timeout="2m")   # 0.12 each: within bo's 0.50
    job = TrainingJob.from_dict(spec)
    res, hw = job.resources.resolve(Hardware(cpus=2)), Hardware(cpus=2)
    assert job_estimate(bo, job, res, hw, "local").basis.startswith("resources x timeout")
    recs = [bo.jobs.submit(spec) for _ in range(3)]
    for r in recs:
        assert bo.jobs.wait(r.id, timeout=240).state == "succeeded", "".join(bo.jobs.logs(r.id))
    costs = {}
    for row in bo.cost.records(kind="job"):
        costs[row["subject"]] = costs.get(row["subject"], 0) + row["cost"]
    assert set(costs) == {r.id for r in recs}
    est = job_estimate(bo, job, res, hw, "local")
    assert est.amount == pytest.approx(statistics.median(costs.values()), abs=1e-6)
    assert est.basis == "median of 3 earlier run(s) of job 'tiny'"
    # a pipeline's runs: each run's steps summed, then the median
    from mlplat.cost.core import Attribution, record_usage
    from mlplat.cost.usage import Usage
    for run, cpu in (("r1", [100, 100]), ("r2", [1000]), ("r3", [300])):
        for step, c in zip("ab", cpu):
            record_usage(bo, Usage(wall_seconds=1, cpu_seconds=c), Attribution("pipeline_step", run, "bo", 1, step, "nightly"))
    write_notebook(tmp_path / "nb.ipynb", "x = 1", "print(x)")
    p = bo.pipelines.load(write_pipeline(tmp_path, {"name": "nightly", "steps": [{"name": "a", "notebook": "nb.ipynb"}]}))
    assert pipeline_estimate(bo, p).amount == pytest.approx(0.3)     # median of 0.2, 1.0, 0.3


def test_spot_discount_arithmetic(home):
    from mlplat.cost.admit import job_estimate
    from mlplat.cost.core import price
    from mlplat.cost.usage import Usage
    from mlplat.jobs.spec import Hardware, TrainingJob
    ws = workspace(home)
    u = Usage(wall_seconds=3600, cpu_seconds=7200, memory_gb_seconds=4 * 3600, gpu_seconds=3600, gpu_type="NVIDIA H200")
    full = 2 * 3.6 + 4 * 0.005 + 1 * 2.5
    assert price(u, ws.config.cost)["total"] == pytest.approx(full)
    assert price(u, ws.config.cost, spot=True)["total"] == pytest.approx(full * 0.4)   # 60% off
    hw = Hardware(gpus=1, cpus=8, gpu_name="NVIDIA H200")
    for spot, backend, factor in (("require", "kubernetes", 0.4), ("prefer", "kubernetes", 1.0), ("require", "local", 1.0)):
        job = TrainingJob("big", "m:f", timeout="2h", spot=spot, resources={"nodes": 2, "processes_per_node": 1, "gpus_per_node": 1,
                                                                             "cpu": 4, "memory": "16G"})
        est = job_estimate(ws, job, job.resources.resolve(hw), hw, backend)
        # per node and hour: 4 cores x 3.6 + 16 GB x 0.005 + 1 GPU x 2.5; 2 nodes, 2 hours
        assert est.amount == pytest.approx(2 * 2 * (4 * 3.6 + 16 * 0.005 + 2.5) * factor), (spot, backend)
        assert est.spot == (factor < 1)


def kueue_problems(obj) -> list[str]:
    "What Kueue's CRD of the object's kind (at its apiVersion) refuses, and the fields it does not declare."
    name = KUEUE[obj["kind"]]
    version = obj["apiVersion"].split("/")[1]
    assert obj["apiVersion"].split("/")[0] == crd(name)["spec"]["group"] and version in [v["name"] for v in crd(name)["spec"]["versions"]]
    schema = crd_schema(name, version)
    return [f"{e.json_path}: {e.message}" for e in jsonschema.validators.validator_for(schema)(schema).iter_errors(obj)] + \
        undeclared_fields(obj, schema)


def test_kueue_objects_validate_and_work_carries_its_queue(home, tmp_path):
    workspace(home)
    out = run_cli("cost", "kueue", "--user", "ada", check=0).stdout
    objs = list(yaml.safe_load_all(out))
    assert [(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in objs] == [
        ("ResourceFlavor", "on-demand", None), ("ResourceFlavor", "spot", None), ("ClusterQueue", "nlp", None),
        ("ClusterQueue", "vision", None), ("LocalQueue", "nlp", "default"), ("LocalQueue", "vision", "ml-vision"),
        ("LocalQueue", "vision", "default"), ("WorkloadPriorityClass", "high", None), ("WorkloadPriorityClass", "low", None)]
    for o in objs:
        assert kueue_problems(o) == [], o
    spot = objs[1]["spec"]
    assert spot["nodeLabels"] == {"mlplat.dev/capacity": "spot"}
    assert spot["nodeTaints"] == [{"key": "mlplat.dev/capacity", "value": "spot", "effect": "NoSchedule"}]
    flavors = objs[3]["spec"]["resourceGroups"][0]["flavors"]
    assert [(f["name"], {r["name"]: r["nominalQuota"] for r in f["resources"]}) for f in flavors] == [
        ("spot", {"cpu": 128, "memory": "512Gi", "nvidia.com/gpu": 16}), ("on-demand", {"cpu": 64, "memory": "256Gi", "nvidia.com/gpu": 8})]
    # the validation can fail: a wrong type and a misspelt field are both found
    objs[3]["spec"]["resourceGroups"][0]["coveredResources"] = "cpu"
    objs[4]["spec"]["clusterQueues"] = "nlp"
    assert kueue_problems(objs[3]) and kueue_problems(objs[4]) == ["$.spec.clusterQueues"]

    # ada's TrainJob (a dry run renders it) carries her team's queue and the priority class; it is still a valid TrainJob
    import mlplat
    ada = mlplat.connect(home, user="ada")
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    plan = ada.jobs.submit({"name": "big", "entrypoint": str(script), "backend": "kubernetes", "spot": "prefer", "timeout": "1m",
                            "priority_class": "high", "resources": {"gpus_per_node": 1, "processes_per_node": 1}}, dry_run=True)
    tj = yaml.safe_load(plan)
    labels = tj["metadata"]["labels"]
    assert (labels["kueue.x-k8s.io/queue-name"], labels["kueue.x-k8s.io/priority-class"]) == ("vision", "high")
    schema = crd_schema("trainer.kubeflow.org_trainjobs.yaml")
    jsonschema.validate(tj, schema)
    assert undeclared_fields(tj, schema) == [] and "preferredDuringSchedulingIgnoredDuringExecution" in plan
    # and each step pod of her Argo Workflow
    from k8s_api_double import WORKFLOW_CRDS
    from mlplat.pipelines.argo_workflow import pipeline_workflow
    write_notebook(tmp_path / "nb.ipynb", "x = 1", "print(x)")
    p = write_pipeline(tmp_path, {"name": "nightly", "backend": "kubernetes", "priority_class": "low",
                                  "steps": [{"name": "a", "notebook": "nb.ipynb", "spot": "require"}]})
    wf, _ = pipeline_workflow(ada, p)
    step = wf["spec"]["templates"][1]
    assert step["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "vision"
    assert step["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "low"
    assert step["nodeSelector"] == {"mlplat.dev/capacity": "spot"}
    schema = crd_schema(WORKFLOW_CRDS["workflows"])
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(wf)) == [] and undeclared_fields(wf, schema) == []
    # bo has no team: Kueue leaves his work alone
    wf, _ = pipeline_workflow(mlplat.connect(home, user="bo"), p)
    assert "kueue.x-k8s.io/queue-name" not in wf["spec"]["templates"][1]["metadata"]["labels"]
