"""`mlplat demo` — the main job of `make demo` — is the churn pipeline (templates/pipelines/churn) end to end on a fresh
embedded workspace: features -> two DeepSpeed trainings side by side -> evaluate + register (gates) -> promote ->
canary -> monitor, in real kernels; run twice, the second run reuses what is identical. Then the registry CLI on the
model it trained: ONNX faithful to PyTorch, gates that block with a readable report, alias history. Then, on the same
workspace, JupyterLab in Chromium (the sidebar, promote, a live job log, run with parameters) and the Voila monitoring
dashboard. Screenshots go to tests/.artifacts/."""
import json
import os
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from helpers import ARTIFACTS, BIN, REPO, clear_mlplat_env, cut_off, free_port, parameters_notebook, run_cli, run_first_cell, sidebar_shows, start_process, stop_process, wait_http

pytestmark = pytest.mark.slow   # the demo's pipeline (DeepSpeed trainings, kernels), then JupyterLab and Voila on its workspace


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    "`mlplat demo` once for the module (the tests after the first use its workspace): (workspace, what it printed)."
    demo_home = tmp_path_factory.mktemp("demo") / "demo"
    with pytest.MonkeyPatch.context() as mp:
        clear_mlplat_env(mp)
        mp.chdir(demo_home.parent)
        text = run_cli("demo", "--home", demo_home, "--customers", "400", "--days", "60", "--epochs", "2", check=0).stdout
    return demo_home, text


def test_demo_runs_the_churn_pipeline_and_is_idempotent(demo, home, monkeypatch):
    demo_home, text = demo
    assert "training set churn@1" in text and "chain intact" in text and "REFUSED, nothing written, audited" in text
    summary = "\n".join(line for line in text.splitlines() if re.match(r"\d\. ", line))
    assert "churn v1 -> champion, v2 -> challenger" in text and "0 failed" in text and "0 alert(s)" in text, summary
    assert "Where to look" in text and text.count("features             succeeded") == 1
    assert "jupyter lab   (the ML Platform sidebar" in text and "mlplat dashboards serve monitoring" in text
    run_id = re.search(r"mlplat pipelines show (churn-[0-9a-f-]+)", text)[1]
    import mlplat
    ws = mlplat.connect(demo_home)
    run = ws.pipelines.get(run_id).to_dict()
    steps = {s["name"]: s for s in run["steps"]}
    assert run["status"] == "succeeded" and all(s["status"] == "succeeded" for s in steps.values()), steps
    assert list(steps) == ["features", "train_champion", "train_challenger", "register_champion", "register_challenger",
                           "promote_champion", "promote_challenger", "deploy", "monitor"]
    f = steps["features"]["outputs"]
    assert f["datasets"] == ["customers@1", "transactions@1"] and f["training_set"] == "churn@1" and f["rows"] == 400 * 2
    assert f["rows_without_recent_activity"] > 0
    for name in ("train_champion", "train_challenger"):
        assert steps[name]["outputs"]["test_auc"] > 0.6
    a0, a1 = (datetime.fromisoformat(steps["train_champion"][k]) for k in ("started_at", "finished_at"))
    b0, b1 = (datetime.fromisoformat(steps["train_challenger"][k]) for k in ("started_at", "finished_at"))
    assert a0 < b1 and b0 < a1                                  # the two trainings ran side by side
    assert steps["register_champion"]["outputs"] == {"version": 1, "gates": {"parity": True, "latency": True}}
    assert steps["register_challenger"]["outputs"]["version"] == 2
    variants = steps["deploy"]["outputs"]["variants"]
    assert set(variants) == {"champion", "challenger"} and sum(variants.values()) == 300 and 0.1 < variants["challenger"] / 300 < 0.35
    mon = steps["monitor"]["outputs"]
    assert mon["predictions"] == 300 and mon["versions"]["1"]["judged"] and mon["versions"]["1"]["drifted"] == []
    assert mon["alerts"] == []                                  # traffic from the training distribution raises nothing
    from mlplat.widgets import JobMonitor
    jm = JobMonitor(mlplat.connect(demo_home), steps["train_champion"]["outputs"]["job_id"], follow=False)
    assert (jm.epochs.value, jm.epochs.max, jm.epochs.bar_style) == (2, 2, "success")   # the widget on a finished job
    assert jm.curve.value.count("<circle") == 2 and "succeeded" in jm.state.value
    online = re.search(r"online lookup   customer \d+: (.*)  \[", text)[1]
    assert "age=" in online and "spend_7d=" in online and "=None" not in online
    assert (demo_home / "feast" / "registry.db").exists() and Path(run["folder"], "monitor.ipynb").is_file()

    # the same pipeline through `mlplat pipelines run`, on the demo's workspace: everything identical is reused
    r = run_cli("--home", demo_home, "pipelines", "run", REPO / "templates/pipelines/churn/pipeline.yaml", "-p", "customers=400",
                "-p", "days=60", "-p", "epochs=2", "-p", "challenger_epochs=1", "-p", "fail_on_alert=true", "--json", check=0)
    again = {s["name"]: s["outputs"] for s in json.loads(r.stdout)["steps"]}
    assert again["train_champion"]["job_id"] == steps["train_champion"]["outputs"]["job_id"]
    assert again["features"]["training_set"] == "churn@1" and again["register_challenger"]["version"] == 2
    assert again["monitor"]["alerts"] == []

    # the registry CLI on what the demo registered
    monkeypatch.setenv("MLPLAT_HOME", str(demo_home))
    import mlplat
    ws = mlplat.connect(demo_home)
    v1 = json.loads(run_cli("models", "show", "churn", "--json", check=0).stdout)[0]
    assert v1["version"] == 1 and v1["aliases"] == ["champion"] and v1["framework"] == "pytorch"
    assert v1["signature"]["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 1]}]
    assert v1["tags"]["mlplat.training_set"] == "churn@1" and v1["tags"]["mlplat.job_id"] == steps["train_champion"]["outputs"]["job_id"]
    assert json.loads(v1["tags"]["mlplat.feature_views"]) == {"customer_activity": 1, "customer_profile": 1}
    import mlflow
    import onnxruntime as ort
    import torch
    mlflow.set_tracking_uri(ws.config.tracking_uri)
    onnx_file = next(Path(mlflow.artifacts.download_artifacts(ws.models.get("churn", 1).source)).rglob("*.onnx"))
    x = np.random.default_rng(0).normal(size=(7, v1["signature"]["inputs"][0]["shape"][1])).astype(np.float32)
    with torch.no_grad():
        expected = mlflow.pytorch.load_model(f"runs:/{v1['run_id']}/model", map_location="cpu")(torch.from_numpy(x)).numpy()
    assert np.abs(ort.InferenceSession(ws.crypto.open_bytes(onnx_file)).run(None, {"input": x})[0] - expected).max() < 1e-4

    refused = run_cli("models", "promote", "churn", "2", "--alias", "champion", "--region", "eu-west-1", check=3)
    assert "FAIL  residency" in refused.stderr and "PASS  parity" in refused.stderr and "Traceback" not in refused.stderr
    ok = json.loads(run_cli("models", "promote", "churn", "2", "--alias", "champion", "--reason", "wider", "--json", check=0).stdout)
    assert "champion" in ok["aliases"]
    back = json.loads(run_cli("models", "rollback", "churn", "--alias", "champion", "--reason", "oops", "--json", check=0).stdout)
    assert back["version"] == 1
    hist = json.loads(run_cli("models", "history", "churn", "--alias", "champion", "--json", check=0).stdout)
    assert [(h["action"], h["from_version"], h["to_version"]) for h in hist] == [("promote", None, 1), ("promote", 1, 2), ("rollback", 2, 1)]
    assert "no earlier holder" in run_cli("models", "rollback", "churn", "--alias", "champion", check=1).stderr
    assert "model:churn/1" in ws.lineage.of(f"mlflow_run:{v1['run_id']}")["downstream_nodes"]


def _job_script(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "ticks.py"
    script.write_text("import time\nfor i in range(20):\n    print(f'tick {i}', flush=True)\n    time.sleep(1)\n")
    return script


@pytest.mark.services
@pytest.mark.browser
def test_jupyterlab_sidebar_promotes_streams_a_log_and_runs_a_notebook(demo, home, browser, jupyter_lab, tmp_path):
    """A real `jupyter lab` on the demo's workspace, driven in Chromium: the sidebar lists the demo's models; Promote moves
    the alias (checked through the core) and the move shows in the alias history; a running job's log streams; "Run with
    parameters" executes a notebook through the pipeline runner and opens the result."""
    import mlplat
    demo_home, _ = demo
    ws = mlplat.connect(demo_home)
    assert ws.models.get("churn", "champion").version == 1     # where the first test left it
    url, token, root = jupyter_lab(demo_home)
    parameters_notebook(root / "report.ipynb")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{url}/lab?token={token}")
    page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
    page.click("li.lm-TabBar-tab[data-id='mlplat-sidebar']")
    model = sidebar_shows(page, "li[data-model='churn']", root.parent / "lab.log")
    assert "champion → v1" in model.inner_text() and "challenger → v2" in model.inner_text()
    page.screenshot(path=str(ARTIFACTS / "lab-sidebar.png"))

    # promote v2 to champion: the gate results are shown before confirming
    page.click("li[data-model='churn'] > button.mlplat-item")
    page.wait_for_selector("li[data-model='churn'] button[data-promote='2']")
    assert cut_off(page, "#mlplat-sidebar .mlplat-table button", "#mlplat-sidebar") == []   # at the default width
    page.click("li[data-model='churn'] button[data-promote='2']")
    dialog = page.wait_for_selector(".jp-Dialog:has(input[name=alias])")
    assert "Every gate passes" in dialog.inner_text() and "residency" in dialog.inner_text()   # run now, before confirming
    page.fill(".jp-Dialog input[name=alias]", "champion")
    page.fill(".jp-Dialog input[name=reason]", "promoted from the UI test")
    page.screenshot(path=str(ARTIFACTS / "lab-promote-dialog.png"))
    page.click(".jp-Dialog .jp-mod-accept")
    page.wait_for_selector("li[data-model='churn'] td:has-text('promoted from the UI test')", timeout=60_000)
    assert ws.models.get("churn", "champion").version == 2       # the alias moved, in the core
    last = ws.models.history("churn", "champion")[-1]
    assert (last["action"], last["from_version"], last["to_version"], last["reason"]) == ("promote", 1, 2, "promoted from the UI test")
    page.screenshot(path=str(ARTIFACTS / "lab-promoted.png"))

    # a refused action: the server's message and what to do, in a dialog; nothing moves
    page.click("li[data-model='churn'] button[data-promote='1']")
    page.wait_for_selector(".jp-Dialog input[name=alias]")
    page.fill(".jp-Dialog input[name=alias]", "latest")
    page.click(".jp-Dialog .jp-mod-accept")
    err = page.wait_for_selector(".jp-Dialog .mlplat-error")
    assert "alias 'latest' is not valid" in err.inner_text() and "What to do:" in err.inner_text(), err.inner_text()
    page.screenshot(path=str(ARTIFACTS / "lab-error-dialog.png"))
    page.click(".jp-Dialog .jp-mod-accept")
    assert ws.models.get("churn", "champion").version == 2

    # a job's live log
    rec = ws.jobs.submit({"name": "ticks", "entrypoint": str(_job_script(tmp_path / "code")), "resources": {"processes_per_node": 1}})
    page.click("details[data-section='jobs'] > summary .mlplat-link")
    page.click(f"li[data-job='{rec.id}'] > button", timeout=30_000)
    log = page.wait_for_selector(f"pre[data-job-log='{rec.id}']")
    page.wait_for_function(f"document.querySelector(\"pre[data-job-log='{rec.id}']\").textContent.includes('tick 2')", timeout=90_000)
    assert ws.jobs.status(rec.id).state == "running"              # lines arrive while the job runs
    page.screenshot(path=str(ARTIFACTS / "lab-job-log.png"))
    page.wait_for_function(f"document.querySelector(\"pre[data-job-log='{rec.id}']\").textContent.includes('tick 19')", timeout=90_000)
    page.wait_for_selector(".mlplat-joblog-state .mlplat-badge-succeeded", timeout=30_000)
    assert "tick 0" in log.inner_text()
    assert " · cost " in page.inner_text(".mlplat-joblog-state") and "USD" in page.inner_text(".mlplat-joblog-state")   # measured, priced
    page.wait_for_selector(f"li[data-job='{rec.id}'] [data-job-cost='{rec.id}']", timeout=60_000)   # the live list shows it too

    # run a notebook with parameters from its toolbar
    page.goto(f"{url}/lab/tree/report.ipynb?token={token}")
    page.click(".mlplat-run-button", timeout=60_000)
    page.wait_for_selector(".jp-Dialog input[name=n]")
    assert page.input_value(".jp-Dialog input[name=n]") == "2"
    page.fill(".jp-Dialog input[name=n]", "7")
    page.screenshot(path=str(ARTIFACTS / "lab-run-dialog.png"))
    page.click(".jp-Dialog .jp-mod-accept")
    page.wait_for_selector(".jp-OutputArea-output:has-text('total 70 x')", timeout=120_000)   # the executed copy, opened
    run = ws.pipelines.list(pipeline="report")[0]
    assert run.status == "succeeded" and run.parameters == {"n": 7} and run.steps["report"].outputs == {"total": 70}
    assert list((root / "mlplat-runs" / run.id).glob("*.ipynb"))
    page.screenshot(path=str(ARTIFACTS / "lab-run-result.png"))

    # the widgets render in JupyterLab as they do in Voila
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("import mlplat\nfrom mlplat.widgets import ModelCard\nModelCard(mlplat.connect(), 'churn')")]
    nbformat.write(nb, str(root / "cards.ipynb"))
    page.goto(f"{url}/lab/tree/cards.ipynb?reset&token={token}")   # reset: the only open notebook
    run_first_cell(page)
    try: card = page.wait_for_selector(".jp-OutputArea .mlplat-widget", timeout=120_000)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "lab-widget-failed.png"))
        pytest.fail("no widget in the cell's output; the output reads:\n" + page.inner_text(".jp-Notebook .jp-Cell .jp-Cell-outputWrapper")
                    + "\n--- jupyter lab log ---\n" + (root.parent / "lab.log").read_text()[-3000:])
    page.wait_for_selector(".jp-OutputArea .mlplat-widget >> text=champion -> v2", timeout=60_000)
    assert "Model churn" in card.inner_text() and "Confirm promote" in card.inner_text()
    page.screenshot(path=str(ARTIFACTS / "lab-widget.png"))
    page.close()


@pytest.mark.services
@pytest.mark.browser
def test_dashboards_render_demo_data_without_source(demo, home, browser, tmp_path):
    """`mlplat dashboards serve` (Voila) on the demo's workspace: the monitoring, feature catalog and cost dashboards show
    its data, and no code, no traceback; without the token there is no dashboard."""
    import httpx
    demo_home, _ = demo
    import mlplat
    demo_ws = mlplat.connect(demo_home)                    # a monthly budget for the demo's user: the cost page burns it down
    toml, me = demo_ws.config.source, demo_ws.principal.name
    toml.write_text(toml.read_text().replace("budgets = {}", f'budgets = {{users = {{"{me}" = 100}}}}', 1))
    port, token = free_port(), "dash-" + os.urandom(12).hex()
    log = tmp_path / "voila.log"
    p = start_process([BIN / "mlplat", "--home", demo_home, "dashboards", "serve", "--port", port, "--token", token], log, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}/voila/render"
    try:
        wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", p, log)
        assert httpx.get(f"{base}/monitoring.ipynb").status_code in (302, 403)     # no token, no dashboard
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.goto(f"{base}/monitoring.ipynb?token={token}", timeout=120_000)
        page.wait_for_selector(".mlplat-widget svg", timeout=120_000)
        page.wait_for_selector("text=A/B results", timeout=60_000)
        text = page.inner_text("body")
        assert "churn: 2 version(s)" in text and "champion" in text and "challenger" in text
        assert "traffic split" in text and "request(s) in the last 7d" in text
        assert "drift per feature" in text
        html = page.content()
        for source in ("import mlplat", "DeploymentPanel(ws", "ab_report(", "QUERY_STRING"):
            assert source not in html, source                         # no code reaches the page
        assert "Traceback" not in html
        page.screenshot(path=str(ARTIFACTS / "dashboard-monitoring.png"), full_page=True)

        page.goto(f"{base}/feature_catalog.ipynb?token={token}", timeout=120_000)
        page.wait_for_selector("text=customer_activity", timeout=120_000)
        text = page.inner_text("body")
        assert "growth-team" in text and "personal" in text and "ae-dubai-1" in text and "transactions@1" in text
        assert "FeatureBrowser(" not in page.content() and "Traceback" not in page.content()
        page.screenshot(path=str(ARTIFACTS / "dashboard-features.png"), full_page=True)

        page.goto(f"{base}/cost.ipynb?token={token}&since=7d", timeout=120_000)   # the demo's steps, measured and priced
        page.wait_for_selector("svg[aria-label^='spend per day'] rect", timeout=120_000)
        text = page.inner_text("body")
        assert "everyone's spend" in text and "in the last 7d" in text and "USD" in text
        assert "pipeline step" in text and "churn" in text and "per pipeline" in text
        assert "Budgets this month" in text and page.query_selector(f"svg[aria-label^='user {me}: '][aria-label*=' of 100 USD']")
        assert "stacked_bars(" not in page.content() and "Traceback" not in page.content()
        page.screenshot(path=str(ARTIFACTS / "dashboard-cost.png"), full_page=True)
        page.close()
    finally:
        stop_process(p)
