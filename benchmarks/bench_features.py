"""mlplat's feature-store calls against direct Feast calls on the same Feast repo, in the same run.

Setup: a fresh workspace `benchmarks/.work/ws-<timestamp>`, the demo's churn data (2,000 customers, 90 days
ending today, seed 7) registered as two sources, and the demo definitions applied (entity `customer`, views
`customer_profile` (ttl 3650d) and `customer_activity` (ttl 7d), service `churn_v1`).

Only ratios mean something here: the machine is shared and noisy. So both variants run in the same process,
on the same Feast repo, interleaved (the order changes every round), each timed with `time.perf_counter()`; medians,
p50 and p99 are reported, and the headline is the ratio of medians mlplat / direct.

a) Training set, entity frame of 10,000 rows (a seeded sample of the labels, with replacement; a new sample
   each repetition, the same one for both variants):
   * mlplat: `ws.features.training_set(entity_df, service="churn_v1", name="bench").to_df()`
   * direct: `store.get_historical_features(entity_df=entity_df, features=store.get_feature_service("churn_v1")).to_df()`
   They do not do the same work: mlplat runs one Feast query per feature view (Feast drops an entity row with
   no value inside the TTL of *any* requested view, taking the other views' values with it, and collapses
   duplicate rows) over the distinct (key, time) pairs, joins the answers back onto every input row, hashes
   the result, writes a versioned parquet snapshot, and records the version, its lineage and an audit record.
   Direct Feast runs one query and returns a frame that silently lacks the dropped rows. The rows each
   returns are reported. The time mlplat spends inside Feast (`get_historical_features` + `.to_df()`, clocked
   by wrapping the store's method) is reported apart from its own work.
b) Online lookup of one entity (random customer id per iteration), after `ws.features.materialize()` and a
   warm-up of every variant:
   * mlplat:       `ws.features.online([{"customer_id": cid}], service="churn_v1")`
   * direct_svc:   `store.get_online_features(features=store.get_feature_service("churn_v1"), entity_rows=...).to_dict()`
   * direct_refs:  the same with a prebuilt list of feature refs, the like-for-like comparison: mlplat
                   resolves the service to refs once, caches them, and makes exactly this Feast call.
   p50/p99 per call in ms; ratio of medians mlplat / direct for both direct variants.

Targets: mlplat's overhead over direct Feast < 10% (ratio < 1.10). Nothing is asserted; numbers are reported.
`--profile` additionally runs cProfile over the mlplat variants and prints where their time goes.
Writes benchmarks/.work/features.json.
"""
import argparse, itertools, json, os, platform, subprocess, sys, time, warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT/"benchmarks"/".work"
TRAIN_REPS, ENTITY_ROWS, ONLINE_CALLS, ONLINE_WARMUP, TARGET = 20, 10_000, 2000, 100, 1.10


def code_version() -> str:
    "The commit measured, with '+dirty' when mlplat/ has uncommitted changes."
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+dirty" if git("status", "--porcelain", "mlplat") else "")


def stats(seconds, scale=1.0) -> dict:
    a = np.asarray(seconds) * scale
    return {"n": len(a), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


def setup():
    import pandas as pd
    import mlplat
    from mlplat.demo import churn_definitions
    from mlplat.synthetic import generate_churn_data
    path = WORK/f"ws-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    ws = mlplat.connect(path)
    start = (pd.Timestamp.now(tz="UTC").normalize() - pd.Timedelta(days=89)).strftime("%Y-%m-%d")
    data = generate_churn_data(2000, 90, seed=7, start=start)
    for name in ("customers", "transactions"):
        ws.features.register_source(name, getattr(data, name), classification="personal", timestamp_field="event_timestamp")
    ws.features.apply(churn_definitions())
    return ws, data, path


class FeastClock:
    "Adds up the time spent inside `store.get_historical_features(...)` and the returned job's `.to_df()`."
    def __init__(self, store):
        self.seconds, orig = 0.0, store.get_historical_features
        def timed(*args, **kw):
            t = time.perf_counter(); job = orig(*args, **kw); self.seconds += time.perf_counter() - t
            to_df = job.to_df
            def timed_to_df(*a, **k):
                t = time.perf_counter(); df = to_df(*a, **k); self.seconds += time.perf_counter() - t
                return df
            job.to_df = timed_to_df
            return job
        store.get_historical_features = timed  # instance attribute: mlplat looks it up on the same store


def bench_training(ws, data, reps=TRAIN_REPS) -> dict:
    store = ws.features.store
    clock = FeastClock(store)
    variants = {
        "mlplat": lambda ent: ws.features.training_set(ent, service="churn_v1", name="bench").to_df(),
        "direct": lambda ent: store.get_historical_features(entity_df=ent, features=store.get_feature_service("churn_v1")).to_df(),
    }
    warm = data.labels.sample(ENTITY_ROWS, replace=True, random_state=10_000).reset_index(drop=True)
    for f in variants.values(): f(warm)  # warm-up: registry, file caches, first parquet reads
    times, feast, rows = ({k: [] for k in variants} for _ in range(3))
    for rep in range(reps):
        ent = data.labels.sample(ENTITY_ROWS, replace=True, random_state=rep).reset_index(drop=True)
        for k in (list(variants) if rep % 2 == 0 else list(variants)[::-1]):  # alternate which goes first
            clock.seconds = 0.0
            t = time.perf_counter(); df = variants[k](ent); times[k].append(time.perf_counter() - t)
            feast[k].append(clock.seconds); rows[k].append(len(df))
    s = {k: stats(v) for k, v in times.items()}
    m_feast, m_own = np.asarray(feast["mlplat"]), np.asarray(times["mlplat"]) - np.asarray(feast["mlplat"])
    return {"entity_rows": ENTITY_ROWS, "reps": reps, "seconds": s,
            "rows_returned": {k: int(np.median(v)) for k, v in rows.items()},
            "rows_returned_min_max": {k: [min(v), max(v)] for k, v in rows.items()},
            "ratio_of_medians": s["mlplat"]["p50"] / s["direct"]["p50"],
            "median_paired_ratio": float(np.median(np.asarray(times["mlplat"]) / np.asarray(times["direct"]))),
            "mlplat_split_seconds": {"inside_feast": stats(m_feast), "own": stats(m_own)},
            "mlplat_split_over_direct_p50": {"inside_feast": float(np.median(m_feast)) / s["direct"]["p50"],
                                             "own": float(np.median(m_own)) / s["direct"]["p50"]}}


def bench_online(ws, n=ONLINE_CALLS, warmup=ONLINE_WARMUP) -> dict:
    store = ws.features.store
    refs = ws.features.resolve_features(service="churn_v1")[0]
    variants = {
        "mlplat": lambda row: ws.features.online(row, service="churn_v1"),
        "direct_svc": lambda row: store.get_online_features(features=store.get_feature_service("churn_v1"), entity_rows=row).to_dict(),
        "direct_refs": lambda row: store.get_online_features(features=refs, entity_rows=row).to_dict(),
    }
    rng = np.random.default_rng(0)
    for cid in rng.integers(1, 2001, warmup):
        for f in variants.values(): f([{"customer_id": int(cid)}])
    times, orders = {k: [] for k in variants}, list(itertools.permutations(variants))
    for i, cid in enumerate(rng.integers(1, 2001, n)):
        row = [{"customer_id": int(cid)}]
        for k in orders[i % len(orders)]:  # every order in turn: no variant always follows the same one
            t = time.perf_counter(); variants[k](row); times[k].append(time.perf_counter() - t)
    s = {k: stats(v, 1000) for k, v in times.items()}
    return {"calls": n, "warmup": warmup, "feature_refs": refs, "ms": s,
            "ratio_of_medians": {"mlplat/direct_svc": s["mlplat"]["p50"] / s["direct_svc"]["p50"],
                                 "mlplat/direct_refs": s["mlplat"]["p50"] / s["direct_refs"]["p50"]},
            "ratio_of_p99": {"mlplat/direct_svc": s["mlplat"]["p99"] / s["direct_svc"]["p99"],
                             "mlplat/direct_refs": s["mlplat"]["p99"] / s["direct_refs"]["p99"]}}


def profile(ws, data, builds=5, lookups=1000):
    "cProfile of the mlplat variants: where does their time go?"
    import cProfile, pstats
    ents = [data.labels.sample(ENTITY_ROWS, replace=True, random_state=100 + i).reset_index(drop=True) for i in range(builds)]
    pr = cProfile.Profile(); pr.enable()
    for ent in ents: ws.features.training_set(ent, service="churn_v1", name="bench_profile").to_df()
    pr.disable()
    st = pstats.Stats(pr, stream=sys.stdout).sort_stats("cumulative")
    print(f"\n--- cProfile, {builds} mlplat training-set builds: what build_training_set and TrainingSet.to_df call ---")
    st.print_callees(r"build_training_set|training.py:\d+\(to_df\)")
    pr = cProfile.Profile(); pr.enable()
    for cid in range(1, lookups + 1): ws.features.online([{"customer_id": cid}], service="churn_v1")
    pr.disable()
    st = pstats.Stats(pr, stream=sys.stdout).sort_stats("cumulative")
    print(f"\n--- cProfile, {lookups} mlplat online lookups: mlplat's functions, then the top 15 overall ---")
    st.print_stats(r"/mlplat/", 20)
    st.print_stats(15)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", action="store_true", help="also print cProfile of the mlplat variants")
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    warnings.filterwarnings("ignore")  # Feast's deprecation notices are noise here
    t0 = time.perf_counter()
    ws, data, path = setup()
    print(f"workspace {path.relative_to(ROOT)} ready in {time.perf_counter() - t0:.1f} s", flush=True)
    training = bench_training(ws, data)
    ws.features.materialize()
    online = bench_online(ws)
    result = {"benchmark": "features", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "code": code_version(),
              "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                          "loadavg_1_5_15_at_end": os.getloadavg()},
              "workspace": str(path), "training_set": training, "online": online,
              "target": {"ratio_below": TARGET, "training_set_met": training["ratio_of_medians"] < TARGET,
                         "online_vs_direct_svc_met": online["ratio_of_medians"]["mlplat/direct_svc"] < TARGET,
                         "online_vs_direct_refs_met": online["ratio_of_medians"]["mlplat/direct_refs"] < TARGET}}
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK/"features.json").write_text(json.dumps(result, indent=2) + "\n")

    tr, s = training, training["seconds"]
    print(f"\na) training set, {ENTITY_ROWS} entity rows, {tr['reps']} interleaved reps (seconds)")
    print(f"{'variant':<10}{'p50':>8}{'p99':>8}{'min':>8}{'max':>8}{'rows':>8}")
    for k in s:
        print(f"{k:<10}{s[k]['p50']:8.3f}{s[k]['p99']:8.3f}{s[k]['min']:8.3f}{s[k]['max']:8.3f}{tr['rows_returned'][k]:>8}")
    sp, so = tr["mlplat_split_seconds"], tr["mlplat_split_over_direct_p50"]
    print(f"ratio of medians mlplat/direct: {tr['ratio_of_medians']:.3f} (median of paired ratios {tr['median_paired_ratio']:.3f}); "
          f"target < {TARGET}: {'MET' if result['target']['training_set_met'] else 'MISSED'}")
    print(f"  mlplat's time: {sp['inside_feast']['p50']:.3f} s inside Feast ({so['inside_feast']:.2f} x direct) "
          f"+ {sp['own']['p50']:.3f} s its own work ({so['own']:.2f} x direct)  [p50s]")
    print("  note: mlplat = one Feast query per view over the distinct (key, time) pairs + join back onto every row + content"
          "\n        hash + parquet snapshot + version row, lineage, audit + reading the snapshot back (.to_df());"
          "\n        direct = one Feast query, which drops the entity rows without a value in every view's TTL and"
          f"\n        collapses duplicate (key, time) rows: {ENTITY_ROWS - tr['rows_returned']['direct']} of {ENTITY_ROWS} rows missing here")
    m = online["ms"]
    print(f"\nb) online lookup, 1 entity, {online['calls']} interleaved calls per variant (ms per call)")
    print(f"{'variant':<13}{'p50':>8}{'p99':>8}{'mean':>8}{'max':>9}")
    for k in m: print(f"{k:<13}{m[k]['p50']:8.3f}{m[k]['p99']:8.3f}{m[k]['mean']:8.3f}{m[k]['max']:9.2f}")
    for k, r in online["ratio_of_medians"].items():
        print(f"ratio of medians {k}: {r:.2f} (p99 ratio {online['ratio_of_p99'][k]:.2f}); target < {TARGET}: {'MET' if r < TARGET else 'MISSED'}")
    print("  note: direct_refs is the like-for-like call (mlplat caches the service's refs and makes that very Feast call);"
          "\n        direct_svc fetches the FeatureService from the registry on every call, as the naive Feast code does")
    print(f"\nwrote {(WORK/'features.json').relative_to(ROOT)} ({time.perf_counter() - t0:.0f} s)")
    if args.profile: profile(ws, data)


if __name__ == "__main__":
    main()
