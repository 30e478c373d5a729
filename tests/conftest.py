"""Shared fixtures: real workspaces in temp folders, real Redis and PostgreSQL servers on 127.0.0.1."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "templates" / "training" / "train_tabular.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clear_mlplat_env(mp):
    "Unset every MLPLAT_* variable through the MonkeyPatch `mp` (restored after): the test's workspace alone is in force."
    for var in [v for v in os.environ if v.startswith("MLPLAT_")]:
        mp.delenv(var)


@pytest.fixture
def home(tmp_path, monkeypatch):
    "An empty folder as MLPLAT_HOME, and as the working directory (so nothing leaks into the repo)."
    monkeypatch.chdir(tmp_path)
    clear_mlplat_env(monkeypatch)
    h = tmp_path / "ws"
    monkeypatch.setenv("MLPLAT_HOME", str(h))
    return h


@pytest.fixture
def ws(home):
    import mlplat
    return mlplat.connect(home)


@pytest.fixture(scope="session")
def churn():
    "Synthetic churn data ending today (so the 7-day activity window has online values)."
    from mlplat.synthetic import generate_churn_data
    start = (pd.Timestamp.now(tz="UTC").normalize() - pd.Timedelta(days=59)).strftime("%Y-%m-%d")
    return generate_churn_data(300, 60, seed=11, start=start)


@pytest.fixture
def churn_ws(ws, churn):
    "A workspace with the demo's sources and feature definitions applied."
    from mlplat.demo import churn_definitions
    ws.features.register_source("customers", churn.customers, classification="personal", timestamp_field="event_timestamp")
    ws.features.register_source("transactions", churn.transactions, classification="personal", timestamp_field="event_timestamp")
    ws.features.apply(churn_definitions())
    return ws


@pytest.fixture
def churn_set(churn_ws, churn):
    "The demo's training set, built in `churn_ws`."
    return churn_ws.features.training_set(churn.labels, service="churn_v1", name="churn")


def run_cli(*args, env_extra=None, check=None, cwd=None):
    "Run the installed `mlplat` console script; returns the CompletedProcess."
    env = {**os.environ, **(env_extra or {})}
    p = subprocess.run([str(BIN / "mlplat"), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    if check is not None:
        assert p.returncode == check, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    exe = shutil.which("redis-server")
    if not exe:
        pytest.skip("redis-server is not installed (.ci/run installs it: apt-get install redis-server)")
    port, d = free_port(), tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_port(port, proc)
    yield f"127.0.0.1:{port}"
    proc.terminate(); proc.wait(10)


def _pg_bin():
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").exists():
            return d
    return None


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    "A throwaway PostgreSQL cluster (run as the postgres user when we are root: postgres refuses root)."
    pg = _pg_bin()
    if pg is None:
        pytest.skip("PostgreSQL server binaries are not installed (.ci/run installs them: apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install 'mlplat[postgres]'")
    d = tmp_path_factory.mktemp("pg")
    data, port = d / "data", free_port()
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(d, "postgres"); os.chmod(d, 0o700)
        for parent in list(d.parents)[:-1]:
            os.chmod(parent, os.stat(parent).st_mode | 0o011)  # let postgres traverse to its folder
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "mlplat"], check=True, capture_output=True)
    proc = subprocess.Popen([*as_user, str(pg / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_port(port, proc)
    for _ in range(50):
        r = subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlplat", "platform"], capture_output=True)
        if r.returncode == 0:
            break
        time.sleep(0.2)
    yield f"postgresql+psycopg://mlplat@127.0.0.1:{port}/platform"
    os.killpg(proc.pid, signal.SIGTERM); proc.wait(20)


def _wait_port(port, proc, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port}")


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory):
    "A real single-node Ray cluster (`ray start --head --block` in its own process group; `ray stop` would end every Ray on the machine)."
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.skip("ray is not installed: pip install 'mlplat[ray]'")
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="mlplat-ray-"))  # short: Ray's unix socket paths must stay under 107 bytes
    gcs, dash = free_port(), free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    log = open(d / "ray.log", "wb")
    proc = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--port", str(gcs),
                             "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                             "--include-dashboard", "true", "--disable-usage-stats", "--temp-dir", str(d / "tmp")],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=d)
    address = f"http://127.0.0.1:{dash}"
    from ray.job_submission import JobSubmissionClient
    end = time.time() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"ray head exited with {proc.returncode}: {(d / 'ray.log').read_text()[-2000:]}")
        try:
            JobSubmissionClient(address).list_jobs()
            break
        except Exception:
            if time.time() > end:
                raise
            time.sleep(1)
    yield address
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: gcs_server, raylet, dashboard, workers
    except ProcessLookupError:
        pass
    proc.wait()
    log.close()
    shutil.rmtree(d, ignore_errors=True)


# ---- serving -----------------------------------------------------------------------------------
X = np.random.default_rng(3).normal(size=(300, 4)).astype(np.float32)
Y = (X[:, 0] - X[:, 2] > 0).astype(int)


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


@pytest.fixture
def server(ws, tmp_path):
    """Start `mlplat serve` for NAME=URI models (or raw `--config=FILE` options); yields a function returning host:port.
    These servers run with `--auth off`: the tests using them are about inference; tests/security checks the default."""
    procs = []

    def start(*models, refresh="0.5", auth="off"):
        port = free_port()
        args = [str(BIN / "mlplat"), "serve", "--port", str(port), "--refresh", refresh, "--auth", auth]
        for m in models:
            args += [m] if m.startswith("--") else ["--model", m]
        log = tmp_path / f"serve-{port}.log"  # a file, not a pipe: nobody reads a pipe while the server runs
        p = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
        procs.append(p)
        import httpx
        end = time.time() + 60
        while time.time() < end:
            if p.poll() is not None:
                raise RuntimeError(log.read_text())
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    return f"127.0.0.1:{port}"
            except httpx.TransportError:
                time.sleep(0.2)
        raise TimeoutError("server did not come up")
    yield start
    for p in procs:
        p.terminate()
        p.wait(20)


@pytest.fixture
def webhook():
    "A local receiver of notification POSTs."
    got = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204); self.end_headers()

        def log_message(self, *a): pass
    srv = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/hook", got
    srv.shutdown()


def configure(home, webhook_url, events):
    "Point the notifications of the workspace's mlplat.toml at the local webhook."
    cfg = home / "mlplat.toml"
    text = cfg.read_text().replace("webhooks = []", f'webhooks = ["{webhook_url}"]', 1)
    cfg.write_text(text.replace("events = [", f"events = {json.dumps(events)}\n# was: events = [", 1))


def pytest_configure(config):
    config.addinivalue_line("markers", "identity(mode): the Jupyter extension's MlplatServer.identity for this test")


# ---- browser and Jupyter servers -----------------------------------------------------------------
ARTIFACTS = REPO / "tests" / ".artifacts"      # screenshots the browser tests save (ignored by git)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


@pytest.fixture
def browser():
    "Debian's Chromium, headless, driven by playwright (never a downloaded browser)."
    exe = shutil.which("chromium")
    if not exe:
        pytest.skip("chromium is not installed (.ci/run installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


def wait_http(url, proc, log, timeout=90):
    "Wait until `url` answers (any status below 500); fail with the server's log if it exits first."
    import httpx
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=5).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


def start_process(args, log, env=None, cwd=None):
    "Start a server in its own session (so the whole group can be stopped), logging to a file."
    return subprocess.Popen([str(a) for a in args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)


def stop_process(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try: os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError: pass


@pytest.fixture
def jupyter_lab(tmp_path):
    "Start a real `jupyter lab` on a workspace: returns (base URL with token, the root folder)."
    procs = []

    def start(workspace: Path):
        port, token, root = free_port(), "t0k3n-" + os.urandom(8).hex(), tmp_path / "lab"
        root.mkdir(exist_ok=True)
        settings = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True, exist_ok=True)
        (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
        log = tmp_path / "lab.log"
        env = {"MLPLAT_HOME": str(workspace), "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
               "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces")}
        p = start_process([BIN / "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}", "--ServerApp.port_retries=0",
                           "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                          log, env, cwd=root)
        procs.append(p)
        wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", p, log)
        return f"http://127.0.0.1:{port}", token, root
    yield start
    for p in procs:
        stop_process(p)


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


def parameters_notebook(path: Path) -> Path:
    "A notebook with a `parameters` cell (n: int = 2, label = 'x') that prints and outputs total = n * 10."
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = nbformat.v4.new_code_cell("n: int = 2  # how many\nlabel = 'x'")
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell("print('total', n * 10, label)\nimport mlplat.pipelines as pl\npl.output('total', n * 10)")]
    nbformat.write(nb, str(path))
    return path


def pytest_collection_modifyitems(config, items):
    "The demo's module first: it is the longest chain (the demo, then the browser and Voila tests on its workspace)."
    items.sort(key=lambda item: 0 if item.path.name == "test_demo.py" else 1)   # stable: the rest keeps its order
