"""Team mode against embedded, in one run.

1. Per call: the same `Workspace` calls made in process (embedded: the core, SQLite platform DB) and through the
   platform service (`mlplat.connect(URL)`: HTTPS to `mlplat server`, one process, same workspace), interleaved, ROUNDS
   each; medians, and the overhead per call in ms. The flow a notebook runs: build a training set of 1,000 entity rows
   over a 20,000-row source and read its rows back (in team mode: built by the service, downloaded as Parquet), one
   online lookup, list models, read versions and their gates, read the alias history, promote and roll back (a
   governed write: gates, audit, history), read the audit log.
2. Hot path: inference p50/p99 on `mlplat serve` (auth on, a token) with the platform service stopped, then running:
   serving never calls the service, so the ratio should be ~1. Also with the service busy serving a remote client in a
   background thread of the benchmark; on a 2-core machine that adds CPU contention, reported, not a target.

Writes benchmarks/.work/team.json and prints it. No assertions: the numbers are reported.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OUT = ROOT / "benchmarks" / ".work" / "team.json"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "30"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from bench_security import free_port, measure, model  # noqa: E402


def wait(url, proc, log, verify=True):
    import httpx
    end = time.time() + 90
    while time.time() < end:
        if proc.poll() is not None: raise RuntimeError(log.read_text())
        try:
            if httpx.get(url, verify=verify).status_code == 200: return
        except httpx.TransportError:
            time.sleep(0.2)
    raise TimeoutError(log.read_text())


def tls(folder):
    import trustme
    ca, issued = trustme.CA(), None
    issued = ca.issue_cert("127.0.0.1")
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca.cert_pem.write_to_path(paths[0]); issued.cert_chain_pems[0].write_to_path(paths[1]); issued.private_key_pem.write_to_path(paths[2])
    return paths


def workspace(folder):
    "A workspace with two registered versions of `risk`, the first one champion."
    from helpers import register_version
    from mlplat.workspace import init
    os.chdir(folder)
    ws = init(folder / "ws", quiet=True)
    register_version(ws, 1.0); register_version(ws, 0.5)
    ws.models.promote("risk", 1, "champion", "baseline")
    return ws


def feature_data(ws):
    "A source of 20,000 readings of 500 devices, one view over it (materialized); the entity frame of the flow."
    import numpy as np
    import pandas as pd
    rng, t0 = np.random.default_rng(3), pd.Timestamp("2026-01-01", tz="UTC")
    when = lambda n: t0 + pd.to_timedelta(rng.integers(0, 30 * 86400, n), unit="s")
    src = pd.DataFrame({"device_id": rng.integers(0, 500, 20000), "event_timestamp": when(20000), "temp": rng.normal(20, 5, 20000)})
    ws.features.register_source("readings", src, classification="internal", timestamp_field="event_timestamp")
    ws.features.apply({"entities": [{"name": "device", "join_key": "device_id"}],
                       "feature_views": [{"name": "sensor", "entities": ["device"], "source": "readings", "ttl": "7d",
                                          "features": [{"name": "temp", "dtype": "float64"}]}]})
    ws.features.materialize(end=t0 + pd.Timedelta(days=31))
    return pd.DataFrame({"device_id": rng.integers(0, 500, 1000), "event_timestamp": when(1000), "label": rng.integers(0, 2, 1000)})


def flow(ws, ents) -> dict:
    "One notebook flow; the seconds each call took."
    t = {}
    def timed(name, fn):
        t0 = time.perf_counter(); fn(); t[name] = time.perf_counter() - t0
    timed("features.training_set + to_df", lambda: ws.features.training_set(ents, features=["sensor:temp"], name="bench").to_df())
    timed("features.online", lambda: ws.features.online([{"device_id": 7}], features=["sensor:temp"]))
    timed("models.list", lambda: ws.models.list())
    timed("models.versions", lambda: ws.models.versions("risk"))
    timed("models.history", lambda: ws.models.history("risk", "champion"))
    timed("models.promote", lambda: ws.models.promote("risk", 2, "champion", "bench"))
    timed("models.rollback", lambda: ws.models.rollback("risk", "champion", "bench"))
    timed("audit.records", lambda: ws.audit.records(50))
    return t


def per_call(ws, remote, ents) -> dict:
    embedded, team = [], []
    flow(ws, ents); flow(remote, ents)   # warm-up
    for _ in range(ROUNDS):
        embedded.append(flow(ws, ents)); team.append(flow(remote, ents))
    out = {}
    for call in embedded[0]:
        a, b = statistics.median(r[call] for r in embedded), statistics.median(r[call] for r in team)
        out[call] = {"embedded_ms": a * 1e3, "team_ms": b * 1e3, "overhead_ms": (b - a) * 1e3, "ratio": b / a}
    a, b = (statistics.median(sum(r.values()) for r in rs) for rs in (embedded, team))
    out["whole flow"] = {"embedded_ms": a * 1e3, "team_ms": b * 1e3, "overhead_ms": (b - a) * 1e3, "ratio": b / a}
    return out


def main():
    import mlplat
    folder = Path(tempfile.mkdtemp(prefix="bench-team-"))
    ws = workspace(folder)
    ents = feature_data(ws)
    admin = ws.tokens.create("bench-admin", ["admin"], "1d")["token"]
    infer = ws.tokens.create("bench-infer", ["inference-client"], "1d")["token"]
    ca, cert, key = tls(folder)
    env = {**os.environ, "MLPLAT_CONFIG": str(ws.config.source)}
    sport, iport = free_port(), free_port()
    slog, ilog = folder / "service.log", folder / "serve.log"
    serve = subprocess.Popen([BIN / "mlplat", "serve", "--model", f"relu={model(folder / 'relu.onnx')}", "--port", str(iport)],
                             env=env, stdout=ilog.open("w"), stderr=subprocess.STDOUT)
    service = None
    try:
        wait(f"http://127.0.0.1:{iport}/v2/health/ready", serve, ilog)
        url, headers = f"http://127.0.0.1:{iport}", {"authorization": f"Bearer {infer}"}
        quiet = [measure(url, True, headers, 2000) for _ in range(3)]
        service = subprocess.Popen([BIN / "mlplat", "server", "--port", str(sport), "--tls-cert", str(cert), "--tls-key", str(key)],
                                   env=env, stdout=slog.open("w"), stderr=subprocess.STDOUT)
        import ssl
        wait(f"https://127.0.0.1:{sport}/health/ready", service, slog, verify=ssl.create_default_context(cafile=str(ca)))
        os.environ["MLPLAT_SERVICE_CA_BUNDLE"] = str(ca)
        remote = mlplat.connect(f"https://127.0.0.1:{sport}", token=admin)
        idle = [measure(url, True, headers, 2000) for _ in range(3)]
        calls = per_call(ws, remote, ents)
        stop = threading.Event()
        def busy():
            client = mlplat.connect(f"https://127.0.0.1:{sport}", token=admin)
            while not stop.is_set(): client.models.versions("risk"); client.audit.records(50)
        t = threading.Thread(target=busy, daemon=True); t.start()
        loaded = [measure(url, True, headers, 2000) for _ in range(3)]
        stop.set(); t.join(30)
        med = lambda runs, i: statistics.median(r[i] for r in runs)
        result = {"rounds": ROUNDS, "per_call": calls,
                  "inference": {"p50_ms_service_stopped": med(quiet, 0), "p50_ms_service_running": med(idle, 0),
                                "ratio_running": med(idle, 0) / med(quiet, 0),
                                "p50_ms_service_busy_same_machine": med(loaded, 0), "ratio_busy": med(loaded, 0) / med(quiet, 0),
                                "p99_ms": {"stopped": med(quiet, 1), "running": med(idle, 1), "busy": med(loaded, 1)}}}
    finally:
        for p in (service, serve):
            if p is not None: p.terminate(); p.wait(20)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
