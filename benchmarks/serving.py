"""Serving throughput and latency — mlplat against `mlflow models serve`, a bare reference endpoint and the in-process
limit, in one run, with the same model and the same load generator.

Model: MLP 32 -> 256 -> 256 -> 1 (PyTorch, exported to ONNX), batch-1 requests.
Load: `wrk` (Debian package `wrk`), one thread, closed loop, 10 s per cell (BENCH_SECONDS), concurrency 1, 8, 32,
a POST Lua script per endpoint. wrk speaks no HTTP/2, so mlplat REST and gRPC are also measured with h2load (Debian
`nghttp2-client`): HTTP/1.1 for REST, h2c for gRPC, same settings — REST and gRPC meet the same generator.
Servers (each alone, pinned to CPU 0; the load generator pinned to CPU 1):
  - in-process ORT: `session.run` in a loop (the limit; no network);
  - mlflow: `mlflow models serve` (env-manager local) on the same ONNX model, /invocations;
  - reference: Starlette + uvicorn + ORT, nothing else (written below, the bar to match);
  - mlplat: `mlplat serve --model mlp=FILE.onnx` — routing, Prometheus metrics and the prediction log all ON.
Reported per cell: requests/s, p50, p99, non-2xx + socket errors, server CPU seconds per request (process tree).
Then adaptive batching where the model is the cost (`batching_payoff`): a wide MLP with and without `--batch`.
Writes benchmarks/.work/serving.json; the figures go to benchmarks/RESULTS.md by hand.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work" / "serving"
BIN = Path(sys.executable).parent
SECONDS = int(os.environ.get("BENCH_SECONDS", 10))
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,8,32").split(",")]
SERVER_CPU, CLIENT_CPU = "0", "1"

REFERENCE = '''
import json, sys
import numpy as np, onnxruntime as ort
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1
sess = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
async def infer(request):
    doc = json.loads(await request.body())
    x = np.asarray(doc["data"], dtype=np.float32).reshape(1, -1)
    y = sess.run(None, {"input": x})[0]
    return Response(json.dumps({"output": y.ravel().tolist()}), media_type="application/json")
app = Starlette(routes=[Route("/infer", infer, methods=["POST"])])
if __name__ == "__main__":
    import uvicorn
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
'''


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, proc, timeout=120):
    import httpx
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); see its log in {WORK}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.3)
    raise TimeoutError(url)


def tree_cpu(pid):
    import psutil
    try:
        procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def wrk(url, body, c, pid):
    lua = WORK / "post.lua"
    # the body as a Lua string literal: JSON string escapes are valid Lua escapes
    lua.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = ' + json.dumps(json.dumps(body)) + "\n")
    cpu0 = tree_cpu(pid)
    out = subprocess.run(["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{c}", f"-d{SECONDS}s", "--latency", "-s", str(lua), url],
                         capture_output=True, text=True).stdout
    cpu = tree_cpu(pid) - cpu0

    def lat(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", out, re.M)
        if not m:
            return None
        return float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out)) if "Socket errors" in out else 0
    return {"rps": rps, "p50_ms": lat("50"), "p99_ms": lat("99"), "errors": non2xx + sock, "requests": total,
            "cpu_ms_per_request": 1000 * cpu / max(total, 1)}


def start(cmd, url_ready, env=None, name="server"):
    # to a file, never a pipe nobody reads: mlflow's access log would fill the pipe and stall the server
    log = open(WORK / f"{name}.log", "w")
    p = subprocess.Popen(["taskset", "-c", SERVER_CPU, *cmd], stdout=log, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, **(env or {})}, start_new_session=True)
    wait_http(url_ready, p)
    return p


def stop(p):
    import signal
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(p.pid, signal.SIGKILL)


def h2load(url, payload, headers, c, pid, h1):
    """One cell with h2load (Debian `nghttp2-client`): HTTP/1.1 for REST, HTTP/2 (h2c) for gRPC, so REST and gRPC meet
    the same C load generator. Latency percentiles come from its per-request log."""
    data, log = WORK / "h2load.body", WORK / "h2load.log"
    data.write_bytes(payload)
    log.unlink(missing_ok=True)  # h2load appends to its log
    cpu0 = tree_cpu(pid)
    cmd = ["taskset", "-c", CLIENT_CPU, "h2load", "-t1", f"-c{c}", "-m1", "-D", str(SECONDS), "-d", str(data),
           f"--log-file={log}", *(["--h1"] if h1 else []), *[a for h in headers for a in ("-H", h)], url]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    cpu = tree_cpu(pid) - cpu0
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    lat = sorted(int(r[2]) / 1000 for r in rows if r[1] == "200")
    errors = sum(r[1] != "200" for r in rows)
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    return {"rps": rps, "p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99) - 1], "errors": errors,
            "requests": len(rows), "cpu_ms_per_request": 1000 * cpu / max(len(rows), 1)}


def grpc_payload(x):
    "A ModelInferRequest for `mlp` in gRPC's length-prefixed message framing."
    from mlplat.serving.grpc import messages
    req = messages()["ModelInferRequest"](model_name="mlp")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 32])
    req.raw_input_contents.append(x.tobytes())
    raw = req.SerializeToString()
    return b"\x00" + len(raw).to_bytes(4, "big") + raw


def main():
    import torch
    import onnxruntime as ort
    from mlplat.models.onnx import export_onnx
    for tool, package in (("wrk", "wrk"), ("h2load", "nghttp2-client")):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed: apt-get install {package}")
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    if os.environ.get("BENCH_PARTS") == "batching":  # only the batching cells
        out = batching_payoff(WORK / "ws", {"MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"})
        (WORK.parent / "serving_batching.json").write_text(json.dumps(out, indent=2))
        return
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    x = np.random.default_rng(0).normal(size=(1, 32)).astype(np.float32)
    model = WORK / "mlp.onnx"
    model.write_bytes(export_onnx(mlp, np.repeat(x, 4, 0)))
    results = {"seconds_per_cell": SECONDS, "model": "MLP 32-256-256-1, batch 1", "cells": {}}

    opts = ort.SessionOptions(); opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    times, end = [], time.perf_counter() + SECONDS
    while time.perf_counter() < end:
        t = time.perf_counter(); sess.run(None, {"input": x}); times.append(time.perf_counter() - t)
    times.sort()
    results["in_process_ort"] = {"rps": len(times) / SECONDS, "p50_ms": 1000 * times[len(times) // 2],
                                 "p99_ms": 1000 * times[int(len(times) * 0.99) - 1]}
    print("in-process ORT", results["in_process_ort"], flush=True)

    # mlflow models serve needs an MLflow model: the same ONNX file, logged as an MLflow onnx model
    import mlflow
    import onnx
    from mlplat.models.onnx import flavor_requirements
    mlflow.set_tracking_uri(f"sqlite:///{WORK / 'mlflow.db'}")
    exp = mlflow.create_experiment("bench", artifact_location=str(WORK / "artifacts"))
    with mlflow.start_run(experiment_id=exp):
        info = mlflow.onnx.log_model(onnx.load(str(model)), name="mlp", save_as_external_data=False,
                                     pip_requirements=flavor_requirements("onnx"))
    local_model = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(WORK / "mlflow_model"))
    (WORK / "reference.py").write_text(REFERENCE)
    home = WORK / "ws"
    servers = {
        "mlflow": (lambda port: [str(BIN / "mlflow"), "models", "serve", "-m", local_model, "--env-manager", "local",
                                 "-p", str(port), "-h", "127.0.0.1", "-w", "1"],
                   "/invocations", {"inputs": {"input": x.tolist()}}, "/health"),
        "reference": (lambda port: [sys.executable, str(WORK / "reference.py"), str(model), str(port)],
                      "/infer", {"data": x.ravel().tolist()}, "/infer"),
        "mlplat_rest": (lambda port: [str(BIN / "mlplat"), "--home", str(home), "serve", "--model", f"mlp={model}", "--port", str(port), "--auth", "off",
                                      "--refresh", "0", "--grpc-port", str(port + 1)],
                        "/v2/models/mlp/infer",
                        {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": x.ravel().tolist()}]},
                        "/v2/health/ready"),
    }
    env = {"MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    for name, (cmd, path, body, ready) in servers.items():
        port = free_port()
        while name == "mlplat_rest" and not _port_free(port + 1):
            port = free_port()
        p = start(cmd(port), f"http://127.0.0.1:{port}{ready}", env, name)
        try:
            url = f"http://127.0.0.1:{port}{path}"
            subprocess.run(["curl", "-s", "-o", "/dev/null", "-X", "POST", "-H", "Content-Type: application/json",
                            "-d", json.dumps(body), url])  # warm-up
            for c in CONCURRENCY:
                r = wrk(url, body, c, p.pid)
                results["cells"][f"{name} c={c}"] = r
                print(f"{name:12s} c={c:<3d} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  "
                      f"errors {r['errors']}  cpu/req {r['cpu_ms_per_request']:.3f} ms", flush=True)
            if name == "mlplat_rest":  # REST vs gRPC, both through h2load
                cases = (("rest", url, json.dumps(body).encode(), ["content-type: application/json"], True),
                         ("grpc", f"http://127.0.0.1:{port + 1}/inference.GRPCInferenceService/ModelInfer", grpc_payload(x),
                          ["content-type: application/grpc", "te: trailers"], False))
                for c in CONCURRENCY:
                    for kind, target, payload, headers, h1 in cases:
                        r = h2load(target, payload, headers, c, p.pid, h1)
                        results["cells"][f"mlplat_{kind} (h2load) c={c}"] = r
                        print(f"mlplat {kind:4s} (h2load) c={c:<3d} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:.3f} ms  "
                              f"p99 {r['p99_ms']:.3f} ms  errors {r['errors']}  cpu/req {r['cpu_ms_per_request']:.3f} ms", flush=True)
        finally:
            stop(p)
    results["batching"] = batching_payoff(home, env)
    (WORK.parent / "serving.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {WORK.parent / 'serving.json'}")


def batching_payoff(home, env):
    """Adaptive batching where the model is the cost: a wide MLP (32 -> 2048 -> 2048 -> 2048 -> 1, a batch-1 ORT call
    well over 0.5 ms) served by mlplat with and without `--batch wide=32:2`, wrk at c=32."""
    import torch
    import onnxruntime as ort
    from mlplat.models.onnx import export_onnx
    torch.manual_seed(0)
    wide = torch.nn.Sequential(torch.nn.Linear(32, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048), torch.nn.ReLU(),
                               torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 1))
    x = np.random.default_rng(0).normal(size=(1, 32)).astype(np.float32)
    model = WORK / "wide.onnx"
    model.write_bytes(export_onnx(wide, np.repeat(x, 4, 0)))
    opts = ort.SessionOptions(); opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    out = {"model": "MLP 32-2048-2048-2048-1", "concurrency": 32}
    for rows in (1, 32):
        xb = np.repeat(x, rows, 0)
        for _ in range(20): sess.run(None, {"input": xb})
        t = time.perf_counter()
        for _ in range(200): sess.run(None, {"input": xb})
        out[f"ort_ms_batch{rows}"] = 1000 * (time.perf_counter() - t) / 200
    print(f"wide MLP: ORT {out['ort_ms_batch1']:.3f} ms at batch 1, {out['ort_ms_batch32']:.3f} ms at batch 32", flush=True)
    body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": x.ravel().tolist()}]}
    for label, extra in (("without batching", []), ("with batching (32 rows, 2 ms)", ["--batch", "wide=32:2"])):
        port = free_port()
        cmd = [str(BIN / "mlplat"), "--home", str(home), "serve", "--model", f"wide={model}", "--port", str(port), "--refresh", "0", "--auth", "off", *extra]
        p = start(cmd, f"http://127.0.0.1:{port}/v2/health/ready", env, "wide")
        try:
            r = wrk(f"http://127.0.0.1:{port}/v2/models/wide/infer", body, 32, p.pid)
        finally:
            stop(p)
        out[label] = r
        print(f"wide MLP {label:30s} c=32 {r['rps']:8.0f} req/s  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  "
              f"errors {r['errors']}  cpu/req {r['cpu_ms_per_request']:.3f} ms", flush=True)
    out["speedup"] = out["with batching (32 rows, 2 ms)"]["rps"] / out["without batching"]["rps"]
    print(f"batching speedup at c=32: {out['speedup']:.2f}x", flush=True)
    return out


def _port_free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


if __name__ == "__main__":
    main()
