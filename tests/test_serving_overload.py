"""Overload: beyond a model's queue (`--max-queue`) the server answers 503 with Retry-After at once, and the requests it
admitted keep their latency instead of every request waiting behind every other one."""
import asyncio
import json
import re
import time

import httpx
import pytest

from helpers import onnx_chain, run_cli

CLIENTS, SECONDS = 48, 4


async def hammer(hostport, path):
    """CLIENTS closed-loop callers for SECONDS, each on its own keep-alive connection; a refused caller waits as
    Retry-After says, then tries again. Plain asyncio streams: httpx's pool would be the bottleneck at this concurrency."""
    host, port = hostport.split(":")
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]})
    request = (f"POST {path} HTTP/1.1\r\nhost: {hostport}\r\ncontent-type: application/json\r\n"
               f"content-length: {len(body)}\r\n\r\n{body}").encode()
    ok, refused, other = [], [], []
    end = time.perf_counter() + SECONDS

    async def caller():
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.perf_counter() < end:
            t = time.perf_counter()
            writer.write(request)
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            status = int(head.split(" ", 2)[1])
            answer = await reader.readexactly(int(re.search(r"content-length: (\d+)", head)[1]))
            took = time.perf_counter() - t
            if status == 200:
                ok.append(took)
            elif status == 503 and "retry-after: 1" in head and b"requests waiting" in answer:
                refused.append(took)
                await asyncio.sleep(1)
            else:
                other.append((status, head, answer[:300]))
        writer.close()
    await asyncio.gather(*(caller() for _ in range(CLIENTS)))
    return ok, refused, other


def median(xs):
    return sorted(xs)[len(xs) // 2]


@pytest.mark.services
def test_overload_is_refused_fast_and_admitted_latency_holds(server, tmp_path):
    model = onnx_chain(tmp_path / "slow.onnx", matmuls=8)  # a few ms per request: 48 callers are far beyond one core
    bounded = server(f"slow={model}", "--max-queue=slow=4")
    unbounded = server(f"slow={model}")  # the default queue (256) holds all 48 callers
    ok_b, refused_b, other_b = asyncio.run(hammer(bounded, "/v2/models/slow/infer"))
    ok_u, refused_u, other_u = asyncio.run(hammer(unbounded, "/v2/models/slow/infer"))
    assert not other_b and not other_u, (other_b[:3], other_u[:3])
    assert refused_b and ok_b and not refused_u, (len(refused_b), len(ok_b), len(refused_u))
    # admitted requests wait behind at most 4 others, not behind 47; refusals do not wait for the model at all
    assert median(ok_b) < median(ok_u) / 2, (median(ok_b), median(ok_u))
    assert median(refused_b) < median(ok_u) / 2, (median(refused_b), median(ok_u))
    metrics = httpx.get(f"http://{bounded}/metrics").text
    refusals = re.search(r'mlplat_request_errors_total\{code="503",model="slow",variant="default",version="1"\} (\S+)', metrics)
    assert refusals and float(refusals[1]) == len(refused_b), metrics[:2000]


def test_max_queue_for_a_model_not_served_is_a_clear_error(ws, tmp_path):
    model = onnx_chain(tmp_path / "m.onnx")
    r = run_cli("serve", "--model", f"m={model}", "--max-queue", "other=4", check=1)  # 1: invalid input
    assert "--max-queue for ['other'], which no --model serves" in r.stderr, r.stderr
    r = run_cli("serve", "--model", f"m={model}", "--max-queue", "m=lots", check=1)
    assert "must be NAME=N with N >= 1" in r.stderr, r.stderr
