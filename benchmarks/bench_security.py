"""What Zero Trust costs a request: `mlplat serve` with TLS and OIDC bearer-JWT verification against the same server
with neither (plain HTTP, `--auth off`), in one run, same model, same client.

Both servers serve a Relu model (4 inputs) from the same workspace; each is pinned to CPU 0, the client to CPU 1.
The secure one has a certificate from a throw-away CA (trustme) and `identity.provider = "oidc"` against a local
issuer on 127.0.0.1 (tests/oidc_issuer.py: RS256, JWKS over HTTP); the client sends `Authorization: Bearer <JWT>` on every request.
The client is httpx at concurrency 1 over one keep-alive connection (so the TLS handshake and the first JWT
verification are paid once, as the target says: "after the first request"); rounds alternate between the servers
(ROUNDS x REQUESTS each, after a warm-up), and the reported p50/p99 are the medians over the rounds.
Writes benchmarks/.work/security.json; the figures go to benchmarks/RESULTS.md by hand.
"""
import json
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work" / "security"
BIN = Path(sys.executable).parent
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", 2000))
SERVER_CPU, CLIENT_CPU = "0", "1"
sys.path.insert(0, str(ROOT / "tests"))
from oidc_issuer import Issuer  # noqa: E402  (the local OIDC issuer the security tests use)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model(path):
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "relu",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 4])])
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def start(args, env, log, url, verify):
    import httpx
    proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, str(BIN / "mlplat"), "serve", *args], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    end = time.time() + 90
    while time.time() < end:
        if proc.poll() is not None: raise RuntimeError(log.read_text())
        try:
            if httpx.get(url + "/v2/health/ready", verify=verify).status_code == 200: return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill(); raise TimeoutError(log.read_text())


def measure(url, verify, headers, n):
    "Latencies (ms) of `n` sequential inference requests over one keep-alive connection, after 200 warm-up requests."
    import httpx
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.5, -1, 2, -3]}]})
    h = {"content-type": "application/json", **headers}
    out = []
    with httpx.Client(verify=verify, http2=False) as c:
        for i in range(200 + n):
            t0 = time.perf_counter()
            r = c.post(url + "/v2/models/relu/infer", content=body, headers=h)
            dt = (time.perf_counter() - t0) * 1e3
            if r.status_code != 200: raise RuntimeError(f"{url}: {r.status_code} {r.text}")
            if i >= 200: out.append(dt)
    out.sort()
    return out[len(out) // 2], out[int(len(out) * 0.99)]


def main():
    import trustme
    WORK.mkdir(parents=True, exist_ok=True)
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    home = WORK / "ws"
    shutil.rmtree(home, ignore_errors=True)  # a fresh workspace each run
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPLAT_")}
    env["MLPLAT_HOME"] = str(home)
    subprocess.run([str(BIN / "mlplat"), "init"], env=env, check=True, capture_output=True)
    issuer = Issuer()
    cfg = home / "mlplat.toml"
    identity = (f'[identity]\nprovider = "oidc"\noidc_issuer = "{issuer.url}"\noidc_audience = "mlplat"\nroles_claim = "groups"\n'
                f'role_map = {{"ml-admins" = "admin", "scorers" = "inference-client"}}\n\n')
    cfg.write_text(re.sub(r"\[identity\]\n.*?\n\n", identity, cfg.read_text(), count=1, flags=re.S))
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    for name, blob in (("ca.pem", ca.cert_pem), ("server.pem", cert.cert_chain_pems[0]), ("server.key", cert.private_key_pem)):
        blob.write_to_path(WORK / name)
    onnx_file = model(WORK / "relu.onnx")
    admin_env = {**env, "MLPLAT_TOKEN": issuer.token(groups=["ml-admins"], exp=int(time.time()) + 3600)}
    plain_port, tls_port = free_port(), free_port()
    plain_url, tls_url = f"http://127.0.0.1:{plain_port}", f"https://127.0.0.1:{tls_port}"
    verify = ssl.create_default_context(cafile=str(WORK / "ca.pem"))
    plain = start(["--model", f"relu={onnx_file}", "--port", str(plain_port), "--refresh", "0", "--auth", "off"],
                  admin_env, WORK / "plain.log", plain_url, True)
    secure = start(["--model", f"relu={onnx_file}", "--port", str(tls_port), "--refresh", "0", "--auth", "required",
                    "--tls-cert", str(WORK / "server.pem"), "--tls-key", str(WORK / "server.key")],
                   admin_env, WORK / "secure.log", tls_url, verify)
    bearer = {"authorization": f"Bearer {issuer.token(groups=['scorers'], exp=int(time.time()) + 3600)}"}
    rounds = {"plain": [], "tls_jwt": []}
    try:
        for r in range(ROUNDS):
            rounds["plain"].append(measure(plain_url, True, {}, REQUESTS))
            rounds["tls_jwt"].append(measure(tls_url, verify, bearer, REQUESTS))
            print(f"round {r + 1}: plain p50 {rounds['plain'][-1][0]:.3f} ms, TLS+JWT p50 {rounds['tls_jwt'][-1][0]:.3f} ms",
                  file=sys.stderr)
    finally:
        for p in (plain, secure):
            p.terminate(); p.wait(20)
        issuer.server.shutdown()
    result = {k: {"p50_ms": statistics.median(x[0] for x in v), "p99_ms": statistics.median(x[1] for x in v),
                  "rounds": [{"p50_ms": a, "p99_ms": b} for a, b in v]} for k, v in rounds.items()}
    result["p50_overhead_ms"] = result["tls_jwt"]["p50_ms"] - result["plain"]["p50_ms"]
    result["p99_overhead_ms"] = result["tls_jwt"]["p99_ms"] - result["plain"]["p99_ms"]
    result["settings"] = {"rounds": ROUNDS, "requests": REQUESTS, "concurrency": 1, "client": "httpx, one keep-alive connection"}
    (WORK.parent / "security.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=1))


if __name__ == "__main__":
    main()
