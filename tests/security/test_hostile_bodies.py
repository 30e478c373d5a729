"""Hostile large bodies cannot stall `mlplat serve` or grow its memory without bound: four 64 MB bodies sent at once
(a shape the data does not fill, too many rows, JSON built to cost 20x its size, one slow-streamed) are each answered
4xx, while `/v2/health/live` keeps a p99 under 100 ms and never a 5xx, and the server's resident memory stays within
its stated budget: what it had before, plus `serving.large_bodies_in_flight` x 2 x 64 MB (where /dev/shm has no room
for a body, each place holds it and the copy sent to its decoding worker; in shared memory, written through a file
descriptor, the server maps neither), plus 64 MB for sockets and the allocator. Each decoding worker stays within
`serving.large_body_memory_mb` of what it had. The shared memory segments that carried the bodies to the workers
are all gone once the server stopped. gRPC answers calls past `serving.grpc_max_concurrent_rpcs`
RESOURCE_EXHAUSTED at once and keeps serving.

Memory is read from /proc (Linux), the platform these servers run on."""
import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from helpers import BIN, free_port, onnx_chain, start_process, stop_process, wait_http

pytestmark = pytest.mark.services   # every test runs `mlplat serve`
MB = 2**20
IN_FLIGHT, WORKER_MB = 2, 1024      # the defaults of serving.large_bodies_in_flight and serving.large_body_memory_mb


def serve(tmp_path, processes, model, *extra, env=None):
    "`mlplat serve --auth off` of `model` (the hostile client here is one that may call): (process, REST url)."
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    proc = start_process([BIN / "mlplat", "serve", "--port", port, "--refresh", "0", "--auth", "off",
                          "--model", f"m={model}", *extra], log, env=env)
    processes.append(proc)
    wait_http(f"http://127.0.0.1:{port}/v2/health/ready", proc, log)
    return proc, f"http://127.0.0.1:{port}"


def rss_mb(pid) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"): return int(line.split()[1]) / 1024
    return 0.0


def children(pid) -> list[int]:
    "The decoding workers (and multiprocessing's resource tracker): the server's child processes."
    try: return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError: return []


def infer_doc(shape, data: bytes) -> bytes:
    return b'{"inputs": [{"name": "input", "shape": %s, "datatype": "FP32", "data": [' % str(shape).encode() + data + b"]}]}"


def body_segments() -> set:
    "The shared memory segments that hold large bodies while they are decoded (Linux: files in /dev/shm)."
    return {p.name for p in Path("/dev/shm").glob("mlplat_body_*")}


def hostile_bodies():
    "Four bodies just under 64 MB and the status each must get."
    fill = 64 * MB - 200
    floats = b",".join([b"1.2345678901234"] * (fill // 16))     # ~4M values
    amplified = b",".join([b"[]"] * (fill // 3))                 # ~22M empty lists: ~1.4 GB of Python objects
    return [("shape not filled", infer_doc([1, 4], floats), 400),
            ("too many rows", infer_doc([2_000_000, 4], floats), 413),
            ("20x in memory", infer_doc([1, 4], amplified), 413)]


PROBE = """
import sys, time, httpx
with httpx.Client(timeout=10) as c:
    while True:
        t = time.perf_counter(); status = c.get(sys.argv[1] + "/v2/health/live").status_code
        print(status, time.perf_counter() - t, flush=True); time.sleep(0.02)
"""


class Watch:
    """Probes /v2/health/live every 20 ms from a process of its own (the test's own 64 MB uploads must not delay the
    probes), and samples the memory of the server and its workers from a thread."""
    def __init__(self, url, pid, tmp_path):
        self.url, self.pid, self.stop, self.out = url, pid, threading.Event(), tmp_path / "probes.txt"
        self.server_mb, self.worker_mb, self.segments = [], {}, set()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self):
        while not self.stop.is_set():
            self.server_mb.append(rss_mb(self.pid))
            self.segments |= body_segments()
            for w in children(self.pid):
                try: self.worker_mb.setdefault(w, []).append(rss_mb(w))
                except OSError: pass
            time.sleep(0.05)

    def __enter__(self):
        self.prober = subprocess.Popen([sys.executable, "-c", PROBE, self.url], stdout=self.out.open("w"))
        time.sleep(0.5)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set(); self.thread.join(15)
        self.prober.terminate(); self.prober.wait(10)
        probes = [line.split() for line in self.out.read_text().splitlines() if len(line.split()) == 2]
        self.statuses = [int(s) for s, _ in probes]
        self.latencies = [float(t) for _, t in probes]


async def slow_stream(url) -> int:
    "Declare 64 MB, send 2 MB, then 10 KB every 0.2 s until the server answers (at most 20 s): its status."
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST /v2/models/m/infer HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                 f"content-length: {64 * MB - 1}\r\n\r\n".encode())
    writer.write(b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [' + b"1," * MB)
    answer = asyncio.ensure_future(reader.readline())
    try:
        for _ in range(100):
            done, _ = await asyncio.wait({answer}, timeout=0.2)
            if done: return int(answer.result().split()[1])
            writer.write(b"1," * 5000)
        return 0
    finally:
        answer.cancel(); writer.close()


async def send_all(url, bodies):
    "POST the bodies at once, after one slow-streamed body took its place: their statuses in order, the slow one last."
    async with httpx.AsyncClient(timeout=60) as c:
        async def post(content):
            try: return (await c.post(url + "/v2/models/m/infer", content=content)).status_code
            except httpx.HTTPError as e: return type(e).__name__
        slow = asyncio.ensure_future(slow_stream(url))
        await asyncio.sleep(0.3)
        return await asyncio.wait_for(asyncio.gather(*(post(b) for _, b, _ in bodies), slow), 90)


def test_hostile_large_bodies_leave_health_fast_and_memory_bounded(tmp_path, processes):
    proc, url = serve(tmp_path, processes, onnx_chain(tmp_path / "relu.onnx"),
                      env={"MLPLAT_SERVING_LARGE_BODY_READ_SECONDS": "3"})
    ok = httpx.post(url + "/v2/models/m/infer", content=infer_doc([1, 4], b"1, -2, 3, -4"))
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [1, 0, 3, 0]
    time.sleep(1)                                                  # the decoding workers are up
    bodies = hostile_bodies()
    segments_before = body_segments()
    baseline = rss_mb(proc.pid)
    workers_before = {w: rss_mb(w) for w in children(proc.pid)}
    assert len(workers_before) >= IN_FLIGHT, workers_before    # (and multiprocessing's resource tracker)
    with Watch(url, proc.pid, tmp_path) as watch:
        t0 = time.perf_counter()
        statuses = asyncio.run(send_all(url, bodies))
        took = time.perf_counter() - t0
        time.sleep(0.5)
    expected = [s for *_, s in bodies] + [408]
    assert statuses == expected, (statuses, [n for n, *_ in bodies] + ["slow"])

    lat = sorted(watch.latencies)
    p99 = lat[int(0.99 * (len(lat) - 1))]
    assert len(lat) > 50 and set(watch.statuses) == {200}, (len(lat), set(watch.statuses))
    assert p99 < 0.1, f"health p99 {p99 * 1000:.0f} ms (max {lat[-1] * 1000:.0f} ms) over {len(lat)} probes in {took:.1f} s"

    budget = baseline + IN_FLIGHT * 2 * 64 + 64
    assert max(watch.server_mb) <= budget, f"server RSS peaked at {max(watch.server_mb):.0f} MB, budget {budget:.0f} MB"
    for w, samples in watch.worker_mb.items():
        assert max(samples) <= workers_before.get(w, 150) + WORKER_MB, (w, max(samples))
    ok = httpx.post(url + "/v2/models/m/infer", content=infer_doc([1, 4], b"1, -2, 3, -4"))
    assert ok.status_code == 200                                    # still serving, and the places were given back
    valid = httpx.post(url + "/v2/models/m/infer", content=infer_doc([300_000, 4], b",".join([b"1,-2,3,-4"] * 300_000)), timeout=60)
    assert valid.status_code == 200, valid.text[:300]                # a large valid body: its arrays come back shared
    out = valid.json()["outputs"][0]["data"]
    assert len(out) == 1_200_000 and out[:4] == out[-4:] == [1, 0, 3, 0]
    assert watch.segments or not Path("/dev/shm").exists()         # the large bodies went through shared memory
    stop_process(proc)                                               # ... and left none of it behind
    assert not body_segments() - segments_before, body_segments() - segments_before
    print(f"health p50 {lat[len(lat) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms over {len(lat)} probes; server RSS {baseline:.0f} -> peak "
          f"{max(watch.server_mb):.0f} MB (budget {budget:.0f}); workers peak "
          f"{max((max(s) for s in watch.worker_mb.values()), default=0):.0f} MB; {took:.1f} s")


def test_grpc_calls_past_the_cap_are_resource_exhausted(tmp_path, processes):
    from mlplat.serving.grpc import messages
    grpc_port = free_port()
    proc, url = serve(tmp_path, processes, onnx_chain(tmp_path / "slow.onnx", matmuls=8), f"--grpc-port={grpc_port}",
                      env={"MLPLAT_SERVING_GRPC_MAX_CONCURRENT_RPCS": "2"})
    M = messages()
    req = M["ModelInferRequest"](model_name="m")
    req.inputs.add(name="input", datatype="FP32", shape=[400, 4])
    req.raw_input_contents.append(np.ones((400, 4), np.float32).tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
        infer = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=M["ModelInferResponse"].FromString)
        live = ch.unary_unary("/inference.GRPCInferenceService/ServerLive", request_serializer=lambda m: m.SerializeToString(),
                              response_deserializer=M["ServerLiveResponse"].FromString)
        infer(req, timeout=30)                                      # warm: the model's cost is measured
        calls = [infer.future(req, timeout=30) for _ in range(12)]
        codes = []
        for c in calls:
            try: c.result(); codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e: codes.append(e.code()); details = e.details()
        assert grpc.StatusCode.OK in codes and grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, (codes, details)
        assert live(M["ServerLiveRequest"](), timeout=10).live                 # below the cap again: served
