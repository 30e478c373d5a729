"""What a flood of refused requests costs `mlplat serve`, and what it does to the clients it serves — in one run, against a
bare reference, with the same load generator.

Servers (each alone, pinned to CPU 0; the load generator pinned to CPU 1):
  - reference: a minimal Starlette + uvicorn app answering every request 401 (the floor of a refusal);
  - mlplat: `mlplat serve --auth required` on a Relu model (4 inputs), REST, one process, Prometheus metrics and the
    prediction log on; once with the refusal rate limit off (`serving.refusal_rate_per_second = 0`: every refusal is a
    401, the like-for-like with the reference) and once with the defaults (10/s, burst 50: past them, 429, sent when
    the address's next allowance is due).
Load: `wrk` (Debian package `wrk`), one thread, closed loop, BENCH_SECONDS (5) s per cell, BENCH_ROUNDS (3) rounds in which
the servers take turns (medians reported), POST /v2/models/relu/infer:
  - flood: 16 connections without credentials (and, for mlplat, with a bad `mlp_` token);
  - authorized: 4 connections with an `inference-client` token, alone (quiet) and while the flood runs (two wrk
    processes on the client CPU).
Reported: requests/s and statuses per cell, p50/p99 of the authorized client, the ratios, and the audit records each
flood added (counted in the platform DB). No assertions. BENCH_PYTHONPATH runs the servers on another checkout (e.g. the
code before this change) for a before/after. Writes benchmarks/.work/refusals.json; the figures go to RESULTS.md by hand.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work" / "refusals"
BIN = Path(sys.executable).parent
SECONDS = int(os.environ.get("BENCH_SECONDS", 5))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
SERVER_CPU, CLIENT_CPU = "0", "1"
FLOOD_C, AUTHORIZED_C = 16, 4
BODY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.5, -1, 2, -3]}]}

REFERENCE = '''
import sys
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
async def deny(request):
    return Response('{"error": "this API requires a bearer token"}', 401, media_type="application/json",
                    headers={"www-authenticate": 'Bearer realm="mlplat"'})
app = Starlette(routes=[Route("/{path:path}", deny, methods=["GET", "POST"])])
if __name__ == "__main__":
    import uvicorn
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
'''

# counts the statuses a wrk thread saw; `done` prints them as "status CODE N" lines
LUA = '''wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = %s
%s
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
function response(status, headers, body) counts[status] = (counts[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do for k, v in pairs(t:get("counts")) do total[k] = (total[k] or 0) + v end end
  for k, v in pairs(total) do io.write(string.format("status %%d %%d\\n", k, v)) end
end
'''


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, proc, timeout=120):
    import httpx
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None: raise RuntimeError(f"server exited ({proc.returncode}); see its log in {WORK}")
        try:
            httpx.get(url, timeout=1); return
        except httpx.TransportError:
            time.sleep(0.3)
    raise TimeoutError(url)


def start(cmd, ready, env, name):
    log = open(WORK / f"{name}.log", "w")
    p = subprocess.Popen(["taskset", "-c", SERVER_CPU, *map(str, cmd)], stdout=log, stderr=subprocess.STDOUT, env=env,
                         start_new_session=True)
    wait_http(ready, p)
    return p


def stop(p):
    import signal
    try:
        os.killpg(p.pid, signal.SIGTERM); p.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(p.pid, signal.SIGKILL)


def wrk_cmd(url, c, token=None, name="load"):
    lua = WORK / f"{name}.lua"
    auth = f'wrk.headers["Authorization"] = "Bearer {token}"' if token else ""
    lua.write_text(LUA % (json.dumps(json.dumps(BODY)), auth))
    return ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{c}", f"-d{SECONDS}s", "--latency", "-s", str(lua),
            url + "/v2/models/relu/infer"]


def parse(out):
    def lat(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", out, re.M)
        return float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)] if m else None
    sock = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out)) if "Socket errors" in out else 0
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50_ms": lat("50"), "p99_ms": lat("99"),
            "statuses": {k: int(v) for k, v in re.findall(r"^status (\d+) (\d+)$", out, re.M)}, "socket_errors": sock}


def run(*cmds):
    "Run wrk commands side by side; their parsed outputs."
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in cmds]
    return [parse(p.communicate()[0]) for p in procs]


def audit_count(engine):
    import sqlalchemy as sa
    with engine.connect() as c: return c.execute(sa.text("select count(*) from audit_log")).scalar()


def mlplat_cells(url, token, engine):
    "Floods (no credential, bad token) and the authorized client quiet and during the no-credential flood."
    out = {}
    for name, cred in (("flood_missing", None), ("flood_bad_token", "mlp_000000000000_" + "A" * 43)):
        before = audit_count(engine)
        out[name] = run(wrk_cmd(url, FLOOD_C, cred, name))[0]
        time.sleep(0.5)   # the first record of each kind is written by the server's writer thread, at once
        out[name]["audit_records_added"] = audit_count(engine) - before
    out["authorized_quiet"] = run(wrk_cmd(url, AUTHORIZED_C, token, "authorized"))[0]
    flood, authorized = run(wrk_cmd(url, FLOOD_C, None, "flood"), wrk_cmd(url, AUTHORIZED_C, token, "authorized"))
    out["flood_with_authorized"], out["authorized_during_flood"] = flood, authorized
    return out


def median_cells(rounds: list) -> dict:
    "The per-cell medians of rps, p50 and p99 over rounds (statuses and audit records summed), and every round's figures."
    import statistics
    out = {}
    for cell in rounds[0]:
        xs = [r[cell] for r in rounds]
        out[cell] = {k: statistics.median(x[k] for x in xs) for k in ("rps", "p50_ms", "p99_ms")}
        out[cell]["statuses"] = {c: sum(x["statuses"].get(c, 0) for x in xs) for c in sorted({c for x in xs for c in x["statuses"]})}
        out[cell]["socket_errors"] = sum(x["socket_errors"] for x in xs)
        if "audit_records_added" in xs[0]: out[cell]["audit_records_added"] = [x["audit_records_added"] for x in xs]
        out[cell]["rounds"] = [{k: x[k] for k in ("rps", "p50_ms", "p99_ms")} for x in xs]
    return out


def main():
    if not shutil.which("wrk"): sys.exit("wrk is not installed: apt-get install -y wrk")
    import sqlalchemy as sa
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import onnx_chain
    shutil.rmtree(WORK, ignore_errors=True); WORK.mkdir(parents=True)
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPLAT_")}
    env["MLPLAT_HOME"] = str(WORK / "ws")
    if os.environ.get("BENCH_PYTHONPATH"): env["PYTHONPATH"] = os.environ["BENCH_PYTHONPATH"]
    # the workspace and the token by the servers' own code (the CLI), so BENCH_PYTHONPATH may be older code
    subprocess.run([str(BIN / "mlplat"), "init"], env=env, check=True, capture_output=True)
    made = subprocess.run([str(BIN / "mlplat"), "tokens", "create", "bench-client", "--role", "inference-client", "--json"],
                          env=env, check=True, capture_output=True, text=True).stdout
    token = json.loads(made)["token"]
    engine = sa.create_engine(f"sqlite:///{WORK / 'ws' / 'platform.db'}")
    model = onnx_chain(WORK / "relu.onnx")
    result = {"when": datetime.now(timezone.utc).isoformat(timespec="minutes"), "seconds": SECONDS, "rounds": ROUNDS,
              "code": env.get("PYTHONPATH", str(ROOT)), "flood_connections": FLOOD_C, "authorized_connections": AUTHORIZED_C}
    (WORK / "reference.py").write_text(REFERENCE)
    servers, urls = [], {}
    try:
        port = free_port()
        servers.append(start([sys.executable, WORK / "reference.py", port], f"http://127.0.0.1:{port}/", env, "reference"))
        urls["reference"] = f"http://127.0.0.1:{port}"
        for label, extra in (("mlplat_no_limit", {"MLPLAT_SERVING_REFUSAL_RATE_PER_SECOND": "0"}), ("mlplat_default_limit", {})):
            port = free_port()
            servers.append(start([BIN / "mlplat", "serve", "--model", f"relu={model}", "--port", port, "--refresh", "0",
                                  "--auth", "required"], f"http://127.0.0.1:{port}/v2/health/ready", {**env, **extra}, label))
            urls[label] = f"http://127.0.0.1:{port}"
        rounds = {k: [] for k in urls}
        for i in range(ROUNDS):   # the servers take turns, round after round
            rounds["reference"].append({"flood_missing": run(wrk_cmd(urls["reference"], FLOOD_C, None, "reference"))[0]})
            for label in ("mlplat_no_limit", "mlplat_default_limit"):
                rounds[label].append(mlplat_cells(urls[label], token, engine))
            print(f"round {i + 1}: " + ", ".join(f"{k} flood {v[-1]['flood_missing']['rps']:.0f}/s" for k, v in rounds.items()),
                  file=sys.stderr)
    finally:
        for p in servers: stop(p)
    for label, rs in rounds.items(): result[label] = median_cells(rs)
    m, ref_rps = result["mlplat_no_limit"], result["reference"]["flood_missing"]["rps"]
    result["ratios"] = {
        "refusals_vs_reference_401": m["flood_missing"]["rps"] / ref_rps,
        "bad_token_refusals_vs_reference_401": m["flood_bad_token"]["rps"] / ref_rps,
        "limited_answers_vs_reference_401": result["mlplat_default_limit"]["flood_missing"]["rps"] / ref_rps,
        **{f"{k}_authorized_p99_flood_vs_quiet": v["authorized_during_flood"]["p99_ms"] / v["authorized_quiet"]["p99_ms"]
           for k, v in (("no_limit", m), ("default_limit", result["mlplat_default_limit"]))},
        **{f"{k}_authorized_rps_flood_vs_quiet": v["authorized_during_flood"]["rps"] / v["authorized_quiet"]["rps"]
           for k, v in (("no_limit", m), ("default_limit", result["mlplat_default_limit"]))}}
    (WORK.parent / "refusals.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["ratios"], indent=1))


if __name__ == "__main__":
    main()
