"""Shared fixtures: real workspaces in temp folders, real Redis, PostgreSQL and Ray on 127.0.0.1, `mlplat serve`,
JupyterLab and Chromium; and the pytest hooks (order, the process guard). Plain helpers live in tests/helpers.py."""
import json
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pandas as pd
import pytest

import process_guard
from helpers import ARTIFACTS, BIN, CHROMIUM_ARGS, clear_mlplat_env, free_port, pg_bin, start_process, stop_process, wait_http, wait_port

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    exe = shutil.which("redis-server")
    if not exe:
        pytest.skip("redis-server is not installed (.ci/run installs it: apt-get install redis-server)")
    port, d = free_port(), tmp_path_factory.mktemp("redis")
    proc = start_process([exe, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d], d / "redis.log")
    wait_port(port, proc, log=d / "redis.log")
    yield f"127.0.0.1:{port}"
    stop_process(proc)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    "A throwaway PostgreSQL cluster (run as the postgres user when we are root: postgres refuses root)."
    pg = pg_bin()
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
    log = tmp_path_factory.mktemp("pg-log") / "postgres.log"     # outside the data folder's parent, which postgres owns
    proc = start_process([*as_user, pg / "postgres", "-D", data, "-p", port, "-h", "127.0.0.1", "-k", d], log)
    wait_port(port, proc, log=log)
    for _ in range(50):
        r = subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlplat", "platform"], capture_output=True)
        if r.returncode == 0:
            break
        time.sleep(0.2)
    yield f"postgresql+psycopg://mlplat@127.0.0.1:{port}/platform"
    stop_process(proc)


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
    # Every port a node binds is its own: each xdist worker starts a head, and two heads on Ray's fixed defaults
    # (the job agent's 52365) leave one without a job agent ("No available agent" for every submission).
    ports = [f"--{name}-port={free_port()}" for name in ("node-manager", "object-manager", "metrics-export", "dashboard-agent-listen",
                                                          "dashboard-agent-grpc", "runtime-env-agent", "ray-client-server")]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    log = open(d / "ray.log", "wb")
    proc = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--port", str(gcs), *ports,
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
    stop_process(proc, timeout=15)   # the whole group: gcs_server, raylet, dashboard, workers
    log.close()
    shutil.rmtree(d, ignore_errors=True)


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
        stop_process(p)


@pytest.fixture
def processes():
    """A list for the processes a test starts itself (append each Popen): what still runs when the test ends, passed or
    failed, gets SIGTERM (time to stop its own children, e.g. a runner its kernels), then SIGKILL after 90 s."""
    started = []
    yield started
    for p in started:
        stop_process(p, timeout=90)


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


# ---- browser and Jupyter servers -----------------------------------------------------------------
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


def pytest_configure(config):
    "The process guard as a plugin of the whole run: a conftest's own hooks would miss session-scoped fixtures."
    if not config.pluginmanager.has_plugin("process_guard"):      # `-p process_guard` may have loaded it
        config.pluginmanager.register(process_guard, "process_guard")


# A test using one of these fixtures must carry the marker (pyproject.toml registers them), or `-m "not services"` would
# start servers; a test that starts a server or Chromium by itself is marked by hand.
MARKER_OF_FIXTURES = {"services": {"server", "redis_url", "postgres_url", "ray_address", "jupyter_lab", "jp_fetch", "jp_serverapp"},
                      "browser": {"browser"}}


def pytest_collection_modifyitems(config, items):
    "Markers checked against the fixtures; the demo's module first: it is the longest chain (the demo, then the browser and Voila tests on its workspace)."
    unmarked = [f"  {item.nodeid} uses {', '.join(sorted(fixtures & set(item.fixturenames)))}: mark it {marker}"
                for item in items for marker, fixtures in MARKER_OF_FIXTURES.items()
                if fixtures & set(item.fixturenames) and not item.get_closest_marker(marker)]
    if unmarked:
        raise pytest.UsageError("tests without the marker their fixtures call for:\n" + "\n".join(unmarked))
    items.sort(key=lambda item: 0 if item.path.name == "test_demo.py" else 1)   # stable: the rest keeps its order
