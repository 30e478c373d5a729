"""Loading the online store and pushing events: mlplat against direct Feast on the same Feast repo, in the same run.

Setup: a fresh workspace per online store under `benchmarks/.work/`, encryption at rest off (so that direct Feast can
read the same snapshot file), one source of N entity keys (default 1,000,000) with one event each, spread over ten
days, and two identical online views over it (`bench_a`, `bench_b`: Feast writes a view's rows once per key, so each
variant loads a view of its own, never one the other loaded).

a) Full load of N keys, SQLite and (where `redis-server` is installed) Redis:
   * mlplat: `ws.features.materialize(["bench_a"], end)`: a new view version is loaded in full, with RBAC, residency,
     the audit record and the record of which version is loaded;
   * direct: `store.materialize(start, end, feature_views=["bench_b"])`, the same Feast call without any of that.
   rows/s of each and the ratio of times mlplat / direct.
b) Incremental: `bench_a` loaded up to day 9 (full), then `ws.features.materialize(["bench_a"], day 10)`: only the
   last day's events are read and written. Its time against the full load of (a) and the rows in its window.
c) Push: a push-enabled view, batches of 1,000 events, interleaved: `ws.features.push` in process against the same
   call through a `mlplat server` on 127.0.0.1 (plain HTTP, an API token: `POST /features/push/{view}`); rows/s.

Nothing is asserted; the figures go to benchmarks/.work/materialize.json and, by hand, to RESULTS.md.
`--rows N` changes N; `--push-batches B` the number of push batches per variant (default 40).
"""
import argparse, json, os, shutil, subprocess, sys, time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT/"benchmarks"/".work"
sys.path.insert(0, str(ROOT/"tests"))
from helpers import BIN, free_port, start_process, stop_process, wait_http   # noqa: E402  (the tests' process helpers)


def events(n: int, days: int = 10, seed: int = 3):
    "n keys, one event each at a random time over the last `days` days, three features."
    import pandas as pd
    rng = np.random.default_rng(seed)
    end = pd.Timestamp.now(tz="UTC").floor("h")
    ts = end - pd.to_timedelta(rng.uniform(0, days * 86400, n), unit="s")
    return pd.DataFrame({"key": np.arange(n, dtype=np.int64), "event_timestamp": ts, "x": rng.normal(size=n),
                         "y": rng.normal(size=n), "z": rng.integers(0, 100, n)}), end


def workspace(name: str, online: str, redis_url: str | None = None):
    import mlplat
    home = WORK/f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    toml = mlplat.connect(home).config.source   # the generated configuration, this user bound to admin
    text = toml.read_text().replace("at_rest = true", "at_rest = false")
    if online == "redis":
        text = text.replace('online_store = "sqlite"', 'online_store = "redis"').replace('"localhost:6379"', f'"{redis_url}"')
    toml.write_text(text)
    return mlplat.connect(home)


def definitions(push: bool = False) -> list:
    from mlplat.features.definitions import Entity, Feature, FeatureView
    feats = [Feature("x", "float64"), Feature("y", "float64"), Feature("z", "int64")]
    views = [FeatureView(n, entities=["thing"], source="things", ttl="3650d", features=feats, push=push and n == "bench_a")
             for n in ("bench_a", "bench_b")]
    return [Entity("thing", join_key="key", value_type="int64")] + views


def timed(f) -> float:
    t = time.perf_counter(); f(); return time.perf_counter() - t


def bench_load(online: str, n: int, redis_url: str | None = None) -> dict:
    import pandas as pd
    df, end = events(n)
    ws = workspace(f"mat-{online}", online, redis_url)
    ws.features.register_source("things", df, classification="internal", timestamp_field="event_timestamp")
    ws.features.apply(definitions())
    start = df["event_timestamp"].min()
    store = ws.features.store
    direct = timed(lambda: store.materialize(start_date=start.to_pydatetime(), end_date=end.to_pydatetime(), feature_views=["bench_b"]))
    day9 = end - pd.Timedelta(days=1)
    first = timed(lambda: ws.features.materialize(["bench_a"], end=day9.to_pydatetime()))   # a full load, to day 9
    last_day = int((df["event_timestamp"] > day9).sum())
    incremental = timed(lambda: ws.features.materialize(["bench_a"], end=end.to_pydatetime()))
    loaded = int((df["event_timestamp"] <= day9).sum())
    return {"online_store": online, "rows": n, "direct_full_seconds": direct, "direct_rows_per_s": n / direct,
            "mlplat_full_to_day9_seconds": first, "mlplat_full_rows": loaded, "mlplat_rows_per_s": loaded / first,
            "ratio_mlplat_over_direct_rows_per_s": (loaded / first) / (n / direct),
            "incremental_seconds": incremental, "incremental_rows": last_day,
            "incremental_over_full": incremental / first}


def bench_push(batches: int) -> dict:
    import mlplat
    df, _ = events(10_000)
    ws = workspace("push", "sqlite")
    ws.features.register_source("things", df, classification="internal", timestamp_field="event_timestamp")
    ws.features.apply(definitions(push=True))
    ws.features.materialize(["bench_a"])
    token = ws.tokens.create("bench-push", ["admin"])["token"]
    port, log = free_port(), ws.config.home/"server.log"
    proc = start_process([BIN/"mlplat", "server", "--port", port], log, env={"MLPLAT_HOME": str(ws.config.home)}, cwd=ws.config.home)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready", proc, log)
        remote = mlplat.connect(f"http://127.0.0.1:{port}", token=token)
        rng = np.random.default_rng(5)
        def batch():
            import pandas as pd
            now = pd.Timestamp.now(tz="UTC")
            return pd.DataFrame({"key": rng.integers(0, 10_000, 1000).astype(np.int64), "event_timestamp": [now] * 1000,
                                 "x": rng.normal(size=1000), "y": rng.normal(size=1000), "z": rng.integers(0, 100, 1000)})
        variants = {"in_process": lambda b: ws.features.push("bench_a", b), "service_http": lambda b: remote.features.push("bench_a", b)}
        for f in variants.values(): f(batch())   # warm-up: Feast's import and registry, the service's first call
        times = {k: [] for k in variants}
        for i in range(batches):
            for k in (list(variants) if i % 2 == 0 else list(variants)[::-1]):
                b = batch()
                times[k].append(timed(lambda: variants[k](b)))
    finally:
        stop_process(proc)
    p50 = {k: float(np.median(v)) for k, v in times.items()}
    return {"batches": batches, "rows_per_batch": 1000, "p50_seconds": p50,
            "rows_per_s": {k: 1000 / v for k, v in p50.items()}, "ratio_service_over_in_process": p50["service_http"] / p50["in_process"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--push-batches", type=int, default=40)
    a = ap.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    WORK.mkdir(parents=True, exist_ok=True)
    out = {"measured_at": datetime.now(timezone.utc).isoformat(timespec="minutes"), "load": []}
    out["load"].append(bench_load("sqlite", a.rows))
    print(json.dumps(out["load"][-1], indent=1), flush=True)
    exe = shutil.which("redis-server")
    if exe:
        port, d = free_port(), WORK/"redis"
        d.mkdir(exist_ok=True)
        redis = start_process([exe, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d], d/"redis.log")
        try:
            time.sleep(0.5)
            out["load"].append(bench_load("redis", a.rows, f"127.0.0.1:{port}"))
            print(json.dumps(out["load"][-1], indent=1), flush=True)
        finally:
            stop_process(redis)
    else:
        print("redis-server is not installed: the Redis load is not measured", file=sys.stderr)
    out["push"] = bench_push(a.push_batches)
    print(json.dumps(out["push"], indent=1))
    (WORK/"materialize.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
