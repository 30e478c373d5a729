"""The prediction log's writer, plain JSON lines against sealed frames (encryption at rest), in one run.

What the server's writer thread does every 20 ms: `DayFiles.write` of one batch of serialized lines (each line a
realistic record: 32 float inputs, one output, ~540 bytes). Batches of 1, 20 and 200 lines (a quiet server, ~1,000 and
~10,000 requests/s), ROUNDS batches each, interleaved plain/sealed; median and p99 µs per batch, and µs per line.
The sealed writer's data key is unwrapped once per day file, so the per-batch cost is one AES-256-GCM call and one
`os.write`. Then the readers: `read_predictions` of 20,000 lines, plain vs sealed. Writes
benchmarks/.work/prediction_log.json; the figures go to benchmarks/RESULTS.md by hand. No assertions.
"""
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mlplat.governance.crypto import Sealer  # noqa: E402
from mlplat.serving.prediction_log import DayFiles, read_predictions  # noqa: E402
from mlplat.serving.protocol import dumps  # noqa: E402

OUT = ROOT / "benchmarks" / ".work" / "prediction_log.json"
ROUNDS = 2000


def line(i: int) -> bytes:
    return dumps({"ts": f"2026-12-03T10:00:{i % 60:02d}.{i:06d}+00:00", "request_id": f"p-{i}", "model": "m", "version": "1",
                  "variant": "default", "latency_ms": 0.21, "inputs": {"input": [[0.123456 * k for k in range(32)]]},
                  "outputs": {"output": [[0.5]]}})


def main():
    home = Path(tempfile.mkdtemp())
    keys = Sealer(SimpleNamespace(key_file=home / "keys" / "kek.json", encryption=SimpleNamespace(key_provider="local", at_rest=True)))
    writers = {"plain": DayFiles(home / "plain", ["m"]), "sealed": DayFiles(home / "sealed", ["m"], keys=keys)}
    out = {"line_bytes": len(line(0)), "rounds": ROUNDS, "write": {}, "read": {}}
    for size in (1, 20, 200):
        batch = [line(i) for i in range(size)]
        times = {k: [] for k in writers}
        for kind, w in writers.items(): w.write("m", "2026-12-03", batch)   # opens the day files (and unwraps the key)
        for _ in range(ROUNDS // max(1, size // 20)):
            for kind, w in writers.items():
                t = time.perf_counter(); w.write("m", "2026-12-03", batch); times[kind].append((time.perf_counter() - t) * 1e6)
        out["write"][size] = {k: {"p50_us": statistics.median(v), "p99_us": sorted(v)[int(len(v) * 0.99)],
                                  "per_line_us": statistics.median(v) / size} for k, v in times.items()}
    for w in writers.values(): w.close()
    for kind in writers:   # a fresh day of 20,000 lines in batches of 20, then read back whole
        folder = home / f"read-{kind}"
        w = DayFiles(folder, ["m"], keys=keys if kind == "sealed" else None)
        for j in range(1000): w.write("m", "2026-12-04", [line(i) for i in range(j * 20, j * 20 + 20)])
        w.close()
        reads = []
        for _ in range(5):
            t = time.perf_counter(); n = len(read_predictions(folder, "m", keys=keys)); reads.append(time.perf_counter() - t)
        out["read"][kind] = {"lines": n, "median_s": statistics.median(reads)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
