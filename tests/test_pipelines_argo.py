"""Pipeline steps on Kubernetes as Argo Workflows: the compiled Workflow and CronWorkflow validate against the real Argo
CRDs (DAG, retries, timeouts, GPU tolerations, secrets only by reference), and the `kubernetes` step backend submits,
follows, logs and stops a step through the Kubernetes API double. The test plays Argo's controller: it runs each
step pod's own command here (its arguments, its environment with the values of the Secrets it references), or holds
the pod running until it is told to stop."""
import json
import os
import re
import subprocess
import sys
import threading
import time

import jsonschema
import pytest
import yaml

from helpers import crd_schema, run_cli, undeclared_fields, wait_for, write_notebook, write_pipeline
from k8s_api_double import WORKFLOW_CRDS, KubeApiDouble
from mlplat.errors import ValidationError

PASSWORD = "pa55-w0rd-for-the-warehouse"


def argo_problems(obj, plural="workflows"):
    "What the CRD's schema refuses, and the fields it does not declare (kubectl apply refuses those)."
    schema = crd_schema(WORKFLOW_CRDS[plural])
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)] + undeclared_fields(obj, schema)


@pytest.fixture
def kube(home, monkeypatch, tmp_path):
    with KubeApiDouble() as api:
        api.configure(monkeypatch, tmp_path, "registry.local/mlplat:0.1")
        monkeypatch.setenv("WAREHOUSE_PW", PASSWORD)
        from mlplat.pipelines.argo import ArgoStepBackend
        monkeypatch.setattr(ArgoStepBackend, "poll_seconds", 0.2)
        yield api


@pytest.fixture
def kws(kube, home):
    import mlplat
    return mlplat.connect(home)


@pytest.fixture
def pipeline(tmp_path):
    "Two kubernetes steps: `count` (with a secret it prints) and `report`, which reads count's output `rows`."
    src = tmp_path / "src"
    src.mkdir()
    write_notebook(src / "count.ipynb", "n: int = 2",
                   "import os\nprint('password', os.environ['DB_PASSWORD'])\nprint('counted', n * 10)",
                   "import mlplat.pipelines as pl\npl.output('rows', n * 10)")
    write_notebook(src / "report.ipynb", "rows: int = 0\nlabel = ''", "import mlplat.pipelines as pl\npl.output('line', f'{label}:{rows}')")
    return write_pipeline(src, {
        "name": "churn-argo", "backend": "kubernetes", "parameters": {"n": 3},
        "steps": [{"name": "count", "notebook": "count.ipynb", "parameters": {"n": "{{ params.n }}"}, "retries": 2, "backoff": 3,
                   "secrets": {"DB_PASSWORD": "env:WAREHOUSE_PW", "S3_KEY": "k8s:warehouse-creds/s3-key"}},
                  {"name": "report_rows", "notebook": "report.ipynb", "depends_on": ["count"], "timeout": 600,
                   "parameters": {"rows": "{{ steps.count.outputs.rows }}", "label": "n={{ params.n }}"},
                   "image": "registry.local/mlplat-gpu:0.1", "resources": {"cpu": 2, "memory": "16Gi", "gpus": 2},
                   "node_selector": {"nvidia.com/gpu.product": "H100"}, "priority_class": "batch-low",
                   "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}]}]})


class Controller:
    """Argo's controller for the double: each new Workflow's pod runs here — `python -m mlplat.pipelines.pod_step` with
    the container's arguments and environment, Secrets resolved as the kubelet would — or, with `hold`, stays running
    until `spec.shutdown` asks it to stop."""

    def __init__(self, kube, tmp_path, hold=False):
        self.kube, self.tmp, self.hold = kube, tmp_path, hold
        self.seen, self.stop, self.threads = set(), threading.Event(), []
        self.env = {}   # workflow -> the environment its pod got

    def __enter__(self):
        t = threading.Thread(target=self._watch, daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _watch(self):
        while not self.stop.is_set():
            for (ns, name), wf in list(self.kube.argo["workflows"].items()):
                if name not in self.seen:
                    self.seen.add(name)
                    t = threading.Thread(target=self._pod, args=(name, wf), daemon=True)
                    t.start()
                    self.threads.append(t)
            time.sleep(0.05)

    def _resolve(self, env):
        out = {}
        for e in env:
            if "value" in e:
                out[e["name"]] = e["value"]
                continue
            ref = e["valueFrom"]["secretKeyRef"]
            secret = self.kube.secrets.get(("default", ref["name"]))
            if secret is None and ref["name"] != "warehouse-creds":
                # the run's own Secret is created just after its Workflow (it needs the Workflow's uid as owner): a
                # kubelet holds the pod (CreateContainerConfigError) until it exists, and so does this controller
                wait_for(lambda: ("default", ref["name"]) in self.kube.secrets, 30, f"Secret {ref['name']}")
                secret = self.kube.secrets[("default", ref["name"])]
            if secret is not None:   # the Secret of the test's k8s: references does not exist: the variable stays unset
                out[e["name"]] = secret["stringData"][ref["key"]]
        return out

    def _pod(self, name, wf):
        self.kube.set_workflow_status(name, "Running")
        self.kube.set_workflow_pod(name, log="")
        if self.hold:
            while self.kube.argo["workflows"][("default", name)]["spec"].get("shutdown") != "Terminate":
                if self.stop.wait(0.05):
                    return
            self.kube.set_workflow_pod(name, phase="Failed", log="started\nterminated\n", exit_code=143)
            self.kube.set_workflow_status(name, "Failed", message="Stopped with strategy 'Terminate'")
            return
        container = wf["spec"]["templates"][0]["container"]
        args = list(container["args"])
        outputs = self.tmp / f"{name}-outputs.json"
        args[args.index("--outputs") + 1] = str(outputs)
        env = self._resolve(container["env"])
        self.env[name] = env
        base = {k: v for k, v in os.environ.items() if not k.startswith("MLPLAT_") and k != "WAREHOUSE_PW"}
        p = subprocess.run([sys.executable, "-m", "mlplat.pipelines.pod_step", *args], env={**base, **env},
                           capture_output=True, text=True, timeout=300)
        self.kube.set_workflow_pod(name, phase="Succeeded" if p.returncode == 0 else "Failed", log=p.stdout + p.stderr,
                                   exit_code=p.returncode)
        if p.returncode == 0:
            self.kube.set_workflow_status(name, "Succeeded", outputs=json.loads(outputs.read_text()))
        else:
            self.kube.set_workflow_status(name, "Failed", message=f"Error (exit code {p.returncode})")


def test_workflow_and_cronworkflow_validate_against_the_crds(kws, pipeline, tmp_path):
    from mlplat.pipelines.argo_workflow import cron_workflow, pipeline_workflow
    from mlplat.pipelines.schedules import Schedule
    m, notes = pipeline_workflow(kws, pipeline, {"n": 5})
    assert argo_problems(m) == []
    text = yaml.safe_dump(m)
    assert PASSWORD not in text and "{{ params" not in text and "not on the workspace volume" in notes[0]
    dag, count, report = m["spec"]["templates"]
    assert [(t["name"], t.get("dependencies")) for t in dag["dag"]["tasks"]] == [("count", None), ("report-rows", ["count"])]
    assert dag["dag"]["tasks"][1]["arguments"]["parameters"] == [{"name": "upstream-count", "value": "{{tasks.count.outputs.parameters.outputs}}"}]
    assert count["retryStrategy"] == {"limit": 2, "retryPolicy": "Always", "backoff": {"duration": "3s", "factor": 2}}
    assert report["activeDeadlineSeconds"] == 600 and report["priorityClassName"] == "batch-low"
    assert report["container"]["resources"] == {"requests": {"cpu": "2", "memory": "16Gi"}, "limits": {"memory": "16Gi", "nvidia.com/gpu": "2"}}
    assert report["tolerations"][-1] == {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert report["nodeSelector"] == {"nvidia.com/gpu.product": "H100"} and report["container"]["image"] == "registry.local/mlplat-gpu:0.1"
    env = {e["name"]: e for e in count["container"]["env"]}
    assert env["DB_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == f"{m['metadata']['name']}-secrets"
    assert env["S3_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "warehouse-creds", "key": "s3-key"}
    assert "value" not in env["MLPLAT_TOKEN"] and env["MLPLAT_HOME"]["value"] == str(kws.config.home)
    # the validation can fail: a misspelt field and a wrong type are both found
    report["activeDeadlineSecond"] = 600
    count["retryStrategy"]["limit"] = [2]
    assert len(argo_problems(m)) == 2
    sched = Schedule("nightly", str(pipeline), "30 2 * * 1-5", "Europe/Paris", {"n": 7}, misfire="skip", overlap="forbid")
    with pytest.raises(ValidationError, match="cannot carry env: or file: secrets"):
        cron_workflow(kws, sched)
    doc = yaml.safe_load(pipeline.read_text())
    doc["steps"][0]["secrets"] = {"DB_PASSWORD": "k8s:warehouse-creds/password"}
    pipeline.write_text(yaml.safe_dump(doc))
    cw = cron_workflow(kws, sched)
    assert argo_problems(cw, "cronworkflows") == []
    assert (cw["spec"]["schedules"], cw["spec"]["timezone"], cw["spec"]["concurrencyPolicy"]) == (["30 2 * * 1-5"], "Europe/Paris", "Forbid")


def test_cli_dry_run_and_cronworkflow(kube, pipeline, tmp_path):
    out = run_cli("pipelines", "run", pipeline, "-p", "n=4", "--dry-run", check=0).stdout
    assert out.startswith("# not on the workspace volume")
    m = yaml.safe_load(out)
    assert m["kind"] == "Workflow" and argo_problems(m) == [] and not kube.argo["workflows"]
    params = m["spec"]["templates"][1]["container"]["args"]
    assert json.loads(params[params.index("--params") + 1]) == {"n": 4}
    doc = yaml.safe_load(pipeline.read_text())
    doc["steps"][0]["secrets"] = {}
    pipeline.write_text(yaml.safe_dump(doc))
    run_cli("schedule", "add", "nightly", "--pipeline", pipeline, "--cron", "0 3 * * *", "-p", "n=6", check=0)
    r = run_cli("schedule", "cronworkflow", "nightly", check=0)
    cw = yaml.safe_load(r.stdout)
    assert cw["kind"] == "CronWorkflow" and argo_problems(cw, "cronworkflows") == [] and "pause it here" in r.stderr
    assert "cronworkflow nightly" in run_cli("schedule", "cronjob", "nightly", check=0).stderr
    doc["steps"][0]["backend"] = "local"
    pipeline.write_text(yaml.safe_dump(doc))
    refused = run_cli("pipelines", "run", pipeline, "--dry-run", check=1)
    assert "step(s) count (local) do not run on kubernetes" in refused.stderr and "Traceback" not in refused.stderr


def test_steps_run_as_workflows_with_secrets_by_reference(kube, kws, pipeline, tmp_path):
    with Controller(kube, tmp_path) as ctl:
        rec = kws.pipelines.run(pipeline, {"n": 4})
    assert rec.status == "succeeded", {n: s.error for n, s in rec.steps.items()}
    count, report = rec.steps["count"], rec.steps["report_rows"]
    assert count.outputs == {"rows": 40} and report.outputs == {"line": "n=4:40"} and report.parameters == {"rows": 40, "label": "n=4"}
    assert count.backend == "kubernetes" and os.path.isfile(count.notebook)
    spent = {r["step"]: r for r in kws.cost.records(kind="pipeline_step")}   # each pod's requests, for as long as it ran
    assert {r["source"] for r in spent.values()} == {"kubernetes-requests"} and sorted(spent) == ["count", "report_rows"]
    assert all(r["cpu_seconds"] >= r["wall_seconds"] > 0 for r in spent.values())
    workflows = dict(kube.argo["workflows"])
    assert len(workflows) == 2
    for (_, name), wf in workflows.items():
        assert argo_problems({k: v for k, v in wf.items() if k != "status"}) == []   # accepted by the double: valid
        assert PASSWORD not in json.dumps(wf)
        assert wf["metadata"]["labels"]["mlplat.dev/pipeline-run"] and wf["metadata"]["labels"]["mlplat.dev/attempt"] == "1"
    # the pod got the token and the secret from the run's Secret, which was deleted once the attempt ended
    count_wf = next(n for (_, n) in workflows if "count" in n)
    assert ctl.env[count_wf]["DB_PASSWORD"] == PASSWORD and ctl.env[count_wf]["MLPLAT_TOKEN"].startswith("mlpd_")
    created = [r for r in kube.requests if r[0] == "POST" and r[1].endswith("/secrets")]
    assert len(created) == 2 and created[0][3]["metadata"]["ownerReferences"][0]["kind"] == "Workflow"
    assert not kube.secrets
    # the notebooks travelled in the run's folder on the volume; the log and executed notebook keep no secret
    log = kws.pipelines.step_log(rec.id, "count")["text"]                 # sealed at rest, read through the workspace
    assert "counted 40" in log and PASSWORD not in log and "[secret DB_PASSWORD]" in log
    assert PASSWORD.encode() not in kws.pipelines.notebook(rec.id, "count")
    assert (kws.config.home / "pipelines" / rec.id / "code" / "count" / "count.ipynb").is_file()


def test_cancel_terminates_the_workflow(kube, kws, pipeline, tmp_path):
    with Controller(kube, tmp_path, hold=True):
        rec = kws.pipelines.start(pipeline, {"n": 1})
        wait_for(lambda: any(w.get("status", {}).get("phase") == "Running" for w in kube.argo["workflows"].values()), 60, "the first step's pod")
        done = kws.pipelines.cancel(rec.id, "enough", wait=60)
    assert done.status == "cancelled" and done.steps["count"].status == "failed" and done.steps["report_rows"].status == "pending"
    patches = [r for r in kube.requests if r[0] == "PATCH"]
    assert len(patches) == 1 and patches[0][3] == {"spec": {"shutdown": "Terminate"}}
    assert "terminated" in kws.pipelines.step_log(rec.id, "count")["text"]


def test_timeout_stops_the_workflow(kube, kws, tmp_path):
    write_notebook(tmp_path / "slow.ipynb", "n = 1", "import time\ntime.sleep(600)")
    spec = write_pipeline(tmp_path, {"name": "slow", "backend": "kubernetes", "steps": [{"name": "s", "notebook": "slow.ipynb", "timeout": 1}]})
    with Controller(kube, tmp_path, hold=True):
        rec = kws.pipelines.run(spec)
    assert rec.status == "failed" and rec.steps["s"].error.startswith("timed out after 1 s"), rec.steps["s"].error
    wf = next(iter(kube.argo["workflows"].values()))
    assert wf["spec"]["shutdown"] == "Terminate" and wf["spec"]["templates"][0]["activeDeadlineSeconds"] == 1


def test_refused_before_anything_runs(kube, home, pipeline, monkeypatch):
    import mlplat
    monkeypatch.delenv("MLPLAT_KUBERNETES_IMAGE")
    monkeypatch.delenv("MLPLAT_KUBERNETES_HOME_CLAIM")
    ws = mlplat.connect(home)
    with pytest.raises(ValidationError) as e:
        ws.pipelines.run(pipeline)
    assert "step count has no container image" in e.value.message and "kubernetes.home_claim is empty" in e.value.message
    assert "report_rows" not in e.value.message   # it names its own image
    kube.token = "rotated"
    monkeypatch.setenv("MLPLAT_KUBERNETES_IMAGE", "registry.local/mlplat:0.1")
    monkeypatch.setenv("MLPLAT_KUBERNETES_HOME_CLAIM", "mlplat-home")
    with pytest.raises(ValidationError, match="Kubernetes refused to list Workflows.*401"):
        mlplat.connect(home).pipelines.run(pipeline)
    assert not kube.argo["workflows"] and ws.pipelines.list() == []


def test_a_failing_step_is_retried_as_new_workflows_then_fails(kube, kws, tmp_path):
    write_notebook(tmp_path / "bad.ipynb", "shard = 7", "raise ValueError(f'bad shard {shard}')")
    spec = write_pipeline(tmp_path, {"name": "bad", "backend": "kubernetes",
                                     "steps": [{"name": "load", "notebook": "bad.ipynb", "retries": 1, "backoff": 0}]})
    with Controller(kube, tmp_path):
        rec = kws.pipelines.run(spec)
    s = rec.steps["load"]
    assert (rec.status, s.status, s.attempts) == ("failed", "failed", 2)
    assert s.error.startswith("ValueError: bad shard 7 (the step's Workflow ") and s.error.endswith("failed: Error (exit code 1))")
    assert sorted(n[-2:] for (_, n) in kube.argo["workflows"]) == ["a1", "a2"]
    log = kws.pipelines.step_log(rec.id, "load")["text"]
    assert log.count("the step failed: ValueError: bad shard 7") == 2
    assert b"ValueError" in kws.pipelines.notebook(rec.id, "load")   # the executed notebook came back from the volume


ARGO_VARIABLE = re.compile(r"\{\{([^{}]+)\}\}")


def play_dag(m, tmp_path, secrets, failed=None, scheduled="2026-12-03T02:00:00Z"):
    """Argo's part in a DAG Workflow, here: each task after its dependencies, its pod's own command with Argo's
    substitutions ({{inputs.parameters.X}}, {{tasks.X.outputs.parameters.outputs}}, {{workflow.name}},
    {{workflow.namespace}}, {{workflow.scheduledTime}} of a CronWorkflow's) and the values of the Secrets it references
    (`secrets`: (Secret, key) -> value). Any other {{...}} fails, as in Argo. A failing pod fails the test, unless
    `failed` (a set) is given: its task goes there and the tasks after it do not run."""
    templates = {t["name"]: t for t in m["spec"]["templates"]}
    tasks = {t["name"]: t for t in templates[m["spec"]["entrypoint"]]["dag"]["tasks"]}
    outputs, logs, workflow = {}, {}, m["metadata"]["name"]

    def substitute(text, scope):
        def one(match):
            key = match.group(1).strip()
            assert key in scope, f"Argo cannot resolve {{{{{key}}}}} in {text!r}"
            return scope[key]
        return ARGO_VARIABLE.sub(one, text)

    while len(outputs) < len(tasks):
        ready = [n for n, t in tasks.items() if n not in outputs and set(t.get("dependencies", [])) <= set(outputs)]
        if not ready and failed:
            break
        assert ready, "the DAG has a cycle"
        for name in ready:
            task, t = tasks[name], templates[tasks[name]["template"]]
            scope = {"workflow.name": workflow, "workflow.namespace": "default", "workflow.scheduledTime": scheduled,
                     **{f"tasks.{n}.outputs.parameters.outputs": o for n, o in outputs.items()}}
            inputs = {f"inputs.parameters.{a['name']}": substitute(a["value"], scope) for a in task.get("arguments", {}).get("parameters", [])}
            scope.update(inputs)
            args = [substitute(a, scope) for a in t["container"]["args"]]
            out_file = tmp_path / f"{workflow}-{name}-outputs.json"
            if "--outputs" in args:
                args[args.index("--outputs") + 1] = str(out_file)
            else:   # a task with no outputs (a CronWorkflow's fire): Argo's default
                out_file.write_text("{}")
            env = {e["name"]: substitute(e["value"], scope) for e in t["container"]["env"] if "value" in e}
            env.update({e["name"]: secrets[(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])]
                        for e in t["container"]["env"] if "valueFrom" in e and (e["valueFrom"]["secretKeyRef"]["name"],
                                                                                 e["valueFrom"]["secretKeyRef"]["key"]) in secrets})
            base = {k: v for k, v in os.environ.items() if not k.startswith("MLPLAT_") and k != "WAREHOUSE_PW"}
            command = [sys.executable if c == "python" else c for c in t["container"]["command"]]
            p = subprocess.run([*command, *args], env={**base, **env}, capture_output=True, text=True, timeout=300)
            logs[name] = p.stdout
            if failed is not None and p.returncode != 0:
                failed.add(name)
                tasks = {n: t for n, t in tasks.items() if n != name and name not in t.get("dependencies", [])}
                continue
            assert p.returncode == 0, p.stdout + p.stderr
            outputs[name] = out_file.read_text()
    return {n: json.loads(o) for n, o in outputs.items()}, logs


def test_the_compiled_dag_runs_step_after_step(kws, pipeline, tmp_path):
    "The whole pipeline's Workflow, played as Argo would run it: outputs travel between pods as Argo parameters."
    from mlplat.pipelines.argo_workflow import cron_workflow, pipeline_workflow
    from mlplat.pipelines.schedules import Schedule
    m, _ = pipeline_workflow(kws, pipeline, {"n": 5})
    run = m["metadata"]["name"]
    outputs, logs = play_dag(m, tmp_path, {(f"{run}-secrets", "count.DB_PASSWORD"): PASSWORD, (f"{run}-secrets", "MLPLAT_TOKEN"): "t"})
    assert outputs == {"count": {"rows": 50}, "report-rows": {"line": "n=5:50"}}
    assert "[secret DB_PASSWORD]" in logs["count"] and PASSWORD not in logs["count"]
    folder = kws.config.home / "pipelines" / run
    assert PASSWORD not in (folder / "count.ipynb").read_text() and (folder / "report_rows.ipynb").is_file()
    doc = yaml.safe_load(pipeline.read_text())
    doc["steps"][0]["secrets"] = {"DB_PASSWORD": "k8s:warehouse-creds/password"}
    pipeline.write_text(yaml.safe_dump(doc))
    cw = cron_workflow(kws, Schedule("nightly", str(pipeline), "0 2 * * *", parameters={"n": 6}))
    # a fire's first task records it in mlplat as the schedule's creator: played in test_pipelines_argo_fires
    tasks = cw["spec"]["workflowSpec"]["templates"][0]["dag"]["tasks"]
    assert [(t["name"], t.get("dependencies")) for t in tasks] == [("mlplat-fire", None), ("count", ["mlplat-fire"]), ("report-rows", ["count"])]
    assert "mlplat-nightly-credential" in json.dumps(cw) and argo_problems(cw, "cronworkflows") == []


def dag_nodes(workflow, outputs, failed=()):
    "The nodes Argo writes for a DAG whose tasks gave `outputs` (task -> outputs), and `failed` tasks."
    nodes = {workflow: {"id": workflow, "name": workflow, "displayName": workflow, "type": "DAG", "phase": "Running"}}
    for i, (task, out) in enumerate(outputs.items()):
        nodes[f"{workflow}-{i}"] = {"id": f"{workflow}-{i}", "name": f"{workflow}.{task}", "displayName": task, "type": "Pod",
                                    "phase": "Succeeded", "startedAt": "2026-12-03T03:00:00Z", "finishedAt": "2026-12-03T03:00:09Z",
                                    "outputs": {"parameters": [{"name": "outputs", "value": json.dumps(out)}]}}
    for task in failed:
        nodes[f"{workflow}-f"] = {"id": f"{workflow}-f", "name": f"{workflow}.{task}", "displayName": task, "type": "Pod",
                                  "phase": "Failed", "message": "Error (exit code 1)", "startedAt": "2026-12-03T03:00:00Z"}
    return nodes


def test_submit_the_whole_pipeline_as_one_workflow(kube, kws, pipeline, tmp_path):
    from mlplat.pipelines.argo_runs import ArgoRuns
    out = run_cli("pipelines", "submit", pipeline, "-p", "n=2", "--json", check=0).stdout
    rec = json.loads(out)
    assert rec["status"] == "running" and all(s["backend"] == "kubernetes" for s in rec["steps"])
    (key, wf), = kube.argo["workflows"].items()   # accepted by the double: valid against the CRD
    name = key[1]
    assert PASSWORD not in json.dumps(wf) and wf["spec"]["templates"][0]["dag"]["tasks"][1]["dependencies"] == ["count"]
    secret = kube.secrets[("default", f"{name}-secrets")]
    assert secret["stringData"]["count.DB_PASSWORD"] == PASSWORD and secret["stringData"]["MLPLAT_TOKEN"].startswith("mlpd_")
    assert secret["metadata"]["ownerReferences"][0]["uid"] == wf["metadata"]["uid"]
    folder = kws.config.home / "pipelines" / rec["id"]
    assert wf["spec"]["templates"][1]["container"]["args"][0] == str(folder / "code" / "count" / "count.ipynb")
    # Argo runs it (played here: every pod's own command), then the record follows the Workflow
    kube.set_workflow_status(name, "Running", nodes=dag_nodes(name, {}))
    assert json.loads(run_cli("pipelines", "show", rec["id"], "--json", check=0).stdout)["status"] == "running"
    outputs, _ = play_dag(wf, tmp_path, {(f"{name}-secrets", k): v for k, v in secret["stringData"].items()})
    kube.set_workflow_status(name, "Succeeded", nodes=dag_nodes(name, outputs))
    shown = json.loads(run_cli("pipelines", "show", rec["id"], "--json", check=0).stdout)
    steps = {s["name"]: s for s in shown["steps"]}
    assert shown["status"] == "succeeded" and steps["report_rows"]["outputs"] == {"line": "n=2:20"}
    assert steps["count"]["seconds"] == 9.0 and os.path.isfile(steps["report_rows"]["notebook"])
    spent = {r["step"]: r for r in kws.cost.records(kind="pipeline_step")}   # what the cluster reserved, for as long as it did
    assert (spent["count"]["source"], spent["count"]["wall_seconds"], spent["count"]["cpu_seconds"]) == ("kubernetes-requests", 9.0, 9.0)
    assert spent["count"]["usage"]["cpu_from"] == "requests (none given: 1 core)" and spent["count"]["cost"] > 0
    audit = [e for e in kws.governance.audit.records() if e["action"] == "pipeline.run"]
    assert audit[-1]["outcome"] == "success" and audit[-1]["details"]["secrets_used"] == {"count": ["DB_PASSWORD", "S3_KEY"]}
    with pytest.raises(ValidationError, match="not running"):
        ArgoRuns(kws).cancel(rec["id"])


def test_cancel_a_submitted_workflow(kube, kws, pipeline):
    from mlplat.pipelines.argo_runs import ArgoRuns
    runs = ArgoRuns(kws)
    rec = runs.submit(pipeline, {"n": 1})
    (_, name), = kube.argo["workflows"]
    kube.set_workflow_status(name, "Running", nodes=dag_nodes(name, {}))
    assert runs.cancel(rec.id, "wrong data").status == "running"   # asked; Argo has not stopped it yet
    assert [r[3] for r in kube.requests if r[0] == "PATCH"] == [{"spec": {"shutdown": "Terminate"}}]
    kube.set_workflow_status(name, "Failed", message="Stopped with strategy 'Terminate'", nodes=dag_nodes(name, {}, failed=["count"]))
    done = runs.sync(rec.id)
    assert done.status == "cancelled" and done.steps["count"].status == "failed" and done.steps["report_rows"].status == "skipped"
    assert kws.pipelines.get(rec.id).status == "cancelled"
    from mlplat.governance.delegation import Delegations
    assert Delegations(kws).revoke(f"pipeline-run:{rec.id}") == 0   # the run's token was revoked when it ended
