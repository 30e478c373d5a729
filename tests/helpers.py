"""What the tests share besides fixtures: paths, the `mlplat` command, ports and server processes, small models,
notebooks and pipelines, and the Kubernetes CRD schemas of tests/fixtures/crds. Tests import these by name
(`from helpers import run_cli`); tests/conftest.py holds only fixtures and pytest hooks."""
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

BIN = Path(sys.executable).parent                      # the venv's console scripts: mlplat, jupyter, ray, deepspeed...
REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "templates" / "training" / "train_tabular.py"
ARTIFACTS = REPO / "tests" / ".artifacts"               # screenshots the browser tests save (ignored by git)
CRDS = REPO / "tests" / "fixtures" / "crds"             # copied CustomResourceDefinitions; provenance in its README.md
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]

# the data of the 'risk' models: 300 rows of 4 features, labelled by feature 0 > feature 2
X = np.random.default_rng(3).normal(size=(300, 4)).astype(np.float32)
Y = (X[:, 0] - X[:, 2] > 0).astype(int)


# ---- the command line and the environment ------------------------------------------------------
def run_cli(*args, env_extra=None, check=None, cwd=None):
    "Run the installed `mlplat` console script; returns the CompletedProcess."
    env = {**os.environ, **(env_extra or {})}
    p = subprocess.run([str(BIN / "mlplat"), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    if check is not None:
        assert p.returncode == check, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def clear_mlplat_env(mp):
    "Unset every MLPLAT_* variable through the MonkeyPatch `mp` (restored after): the test's workspace alone is in force."
    for var in [v for v in os.environ if v.startswith("MLPLAT_")]:
        mp.delenv(var)


def configure(home, webhook_url, events):
    "Point the notifications of the workspace's mlplat.toml at the local webhook."
    import json
    cfg = home / "mlplat.toml"
    text = cfg.read_text().replace("webhooks = []", f'webhooks = ["{webhook_url}"]', 1)
    cfg.write_text(text.replace("events = [", f"events = {json.dumps(events)}\n# was: events = [", 1))


# ---- ports and server processes ----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=30, log: Path | None = None):
    "Wait until something listens on 127.0.0.1:`port`; fail if `proc` exits first (with the end of its `log`)."
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}" + (f":\n{log.read_text()[-3000:]}" if log else ""))
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port}")


def wait_http(url, proc, log, timeout=90, verify=True):
    "Wait until `url` answers (any status below 500); fail with the server's log if it exits first."
    import httpx
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=5, verify=verify).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


def start_process(args, log, env=None, cwd=None):
    "Start a server in its own session (so `stop_process` can end it with everything it started), logging to a file."
    return subprocess.Popen([str(a) for a in args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)


def stop_process(proc, timeout=20):
    """End `proc` and, when it leads its own process group (`start_process`), everything left in that group: SIGTERM,
    then SIGKILL after `timeout` s. A process in our own group is signalled alone (killpg would hit the test run)."""
    try:
        group = os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        group = False

    def send(sig):
        try:
            if group: os.killpg(proc.pid, sig)
            else: proc.send_signal(sig)
        except ProcessLookupError:
            pass
    send(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    send(signal.SIGKILL)          # what did not stop: the leader past its timeout, or children it left in its group
    proc.wait()


def pg_bin():
    "The newest PostgreSQL server binaries folder (Debian's layout), or None."
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").exists():
            return d
    return None


# ---- models ------------------------------------------------------------------------------------
def register_version(ws, c):
    "A scikit-learn model logged in a run, registered (ONNX + gates) as the next version of 'risk'."
    import mlflow
    from sklearn.linear_model import LogisticRegression
    from mlplat.models.onnx import flavor_requirements
    mlflow.set_tracking_uri(ws.config.tracking_uri)
    client = ws.mlflow_client()
    exp = client.get_experiment_by_name("risk")
    exp_id = exp.experiment_id if exp else client.create_experiment("risk", artifact_location=f"{ws.config.artifact_root}/risk")
    with mlflow.start_run(experiment_id=exp_id) as r:
        mlflow.sklearn.log_model(LogisticRegression(C=c).fit(X, Y), name="model", input_example=X[:5],
                                 pip_requirements=flavor_requirements("sklearn"))
    return ws.models.register(r.info.run_id, "risk", sample=X[:64])


def onnx_chain(path, matmuls=0, width=1024):
    "A model taking [-1, 4]: Relu alone (fast), or after a chain of `matmuls` width x width matmuls (the cost knob)."
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits, last = [], [], "input"
    if matmuls:
        rng = np.random.default_rng(0)
        inits.append(numpy_helper.from_array(rng.normal(size=(4, width)).astype(np.float32) * 0.01, "w0"))
        nodes.append(helper.make_node("MatMul", ["input", "w0"], ["h0"])); last = "h0"
        inits.append(numpy_helper.from_array(rng.normal(size=(width, width)).astype(np.float32) * 0.01, "w"))
        for i in range(1, matmuls):
            nodes.append(helper.make_node("MatMul", [last, "w"], [f"h{i}"])); last = f"h{i}"
        inits.append(numpy_helper.from_array(np.ones((width, 4), np.float32) * 0.01, "wout"))
        nodes.append(helper.make_node("MatMul", [last, "wout"], ["pre"])); last = "pre"
    nodes.append(helper.make_node("Relu", [last], ["output"]))
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 4])], inits)
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


# ---- a training job small enough for every test that needs a real one ----------------------------
TINY_JOB = """
import numpy as np, torch
from mlplat.jobs.runtime import context

def rows():
    "64 rows of 4 features; feature 0 is 42.4242.. so that a plaintext copy is easy to find."
    x = np.random.default_rng(5).normal(size=(64, 4)).astype(np.float32)
    x[:, 0] = 42.4242 + np.arange(64, dtype=np.float32) / 1000
    return x

def main(args):
    "What a training script ends with: the model, an input example and held-out rows logged into the job's run."
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = rows()
    context().log_model(net, input_example=x[:5], holdout=x, feature_names=["a", "b", "c", "d"])
"""


def tiny_job(folder: Path, monkeypatch, **spec) -> dict:
    """A job spec running `TINY_JOB` as `tiny_job:main` (torchrun starts in seconds, a DeepSpeed script in tens), its
    module written to `folder` and importable by the job's processes and by the test (`import tiny_job`)."""
    (folder / "tiny_job.py").write_text(TINY_JOB)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.syspath_prepend(str(folder))
    return {"name": "tiny", "entrypoint": "tiny_job:main", "resources": {"processes_per_node": 1}, **spec}


def stored_files(ws) -> list:
    "Every file in the workspace's MLflow artifact store (a local folder in tests)."
    return sorted(p for p in Path(ws.config.artifact_root).rglob("*") if p.is_file())


# ---- notebooks and pipelines -------------------------------------------------------------------
def write_notebook(path: Path, params: str, *cells: str) -> Path:
    "A Python notebook whose first cell, tagged `parameters`, is `params`, followed by a code cell per item of `cells`."
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    first = nbformat.v4.new_code_cell(params)
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, str(path))
    return path


def parameters_notebook(path: Path) -> Path:
    "A notebook with a `parameters` cell (n: int = 2, label = 'x') that prints and outputs total = n * 10."
    return write_notebook(path, "n: int = 2  # how many\nlabel = 'x'",
                          "print('total', n * 10, label)\nimport mlplat.pipelines as pl\npl.output('total', n * 10)")


def write_pipeline(folder: Path, doc: dict) -> Path:
    "The pipeline spec `doc` as <folder>/<name>.yaml."
    import yaml
    path = folder / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def cut_off(page, inner: str, outer: str) -> list:
    "The visible elements matching `inner` whose right edge passes `outer`'s: cut off by it (the start of each one's HTML)."
    return page.evaluate("""([inner, outer]) => {
        const box = document.querySelector(outer).getBoundingClientRect();
        return [...document.querySelectorAll(inner)].filter(e => e.offsetParent !== null)
            .filter(e => e.getBoundingClientRect().right > box.right + 0.5).map(e => e.outerHTML.slice(0, 120));
    }""", [inner, outer])


def sidebar_shows(page, selector: str, lab_log: Path, timeout: int = 90_000):
    """The sidebar's element `selector` once it is visible; if it never is, fail with what the sidebar shows instead (a
    section's error, or still loading) and the Jupyter server's log: a timeout alone says nothing on a CI machine."""
    try:
        return page.wait_for_selector(selector, timeout=timeout)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "lab-sidebar-failed.png"))
        shown = page.evaluate("""() => [...document.querySelectorAll('#mlplat-sidebar details')].map(d =>
            `[${d.dataset.section}${d.getAttribute('aria-busy') ? ', loading' : ''}] ${d.innerText.slice(0, 300)}`).join('\\n')""")
        pytest.fail(f"{selector} never showed in {timeout / 1000:.0f} s; the sidebar reads:\n{shown}\n--- jupyter lab log ---\n"
                    + lab_log.read_text()[-3000:])


def run_first_cell(page, attempts: int = 3) -> None:
    """Run the open notebook's first cell once its kernel is idle. A keystroke that lands while JupyterLab is still laying
    out the notebook is lost, so the run is retried until the cell's prompt shows it was taken ([*] or [1])."""
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    taken = "(() => { const p = document.querySelector('.jp-Notebook .jp-Cell .jp-InputPrompt'); return p && /\\[[*0-9]+\\]/.test(p.textContent); })()"
    for attempt in range(attempts):
        page.click(".jp-Notebook .jp-Cell .cm-content", timeout=60_000)
        page.keyboard.press("Shift+Enter")
        try:
            page.wait_for_function(taken, timeout=20_000)
            return
        except Exception:
            if attempt == attempts - 1:
                raise


# ---- Kubernetes CRDs ---------------------------------------------------------------------------
@functools.cache
def crd(name: str) -> dict:
    "The CustomResourceDefinition tests/fixtures/crds/`name` (parsed once: some are megabytes)."
    import yaml
    return yaml.load((CRDS / name).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def crd_schema(name: str, version: str | None = None) -> dict:
    "The openAPIV3Schema of the CRD's `version` (default: its first), to validate a manifest with jsonschema."
    versions = crd(name)["spec"]["versions"]
    return next(v for v in versions if version in (None, v["name"]))["schema"]["openAPIV3Schema"]


def undeclared_fields(obj, schema: dict, path: str = "$") -> list[str]:
    """Paths in `obj` that `schema` does not declare. jsonschema lets them pass (CRD schemas do not say
    additionalProperties: false), but `kubectl apply` validates strictly and refuses them: a misspelt field."""
    if isinstance(obj, list) and "items" in schema:
        return [p for i, v in enumerate(obj) for p in undeclared_fields(v, schema["items"], f"{path}[{i}]")]
    if not isinstance(obj, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(schema.get("additionalProperties"), dict):
        return [p for k, v in obj.items() for p in undeclared_fields(v, schema["additionalProperties"], f"{path}.{k}")]
    props = schema.get("properties")
    if props is None:
        return []
    return [p for k, v in obj.items()
            for p in (undeclared_fields(v, props[k], f"{path}.{k}") if k in props else [f"{path}.{k}"])]


def wait_for(cond, timeout, what):
    "Poll `cond` until it is true; fail naming `what` after `timeout` seconds (a wait, not a timed assertion)."
    end = time.time() + timeout
    while time.time() < end:
        if cond(): return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def logged_predictions(ws, name, n, timeout=30):
    "Wait until a server's writer has written `n` records of `name` (it writes every 20 ms, off the response path); they, read with the workspace's keys."
    from mlplat.serving.prediction_log import read_predictions
    end = time.time() + timeout
    while len(recs := read_predictions(ws.config.home, name, keys=ws.crypto)) < n and time.time() < end:
        time.sleep(0.05)
    return recs
