"""`[feast] offline_store = "spark"`: the same definitions over the same data give the same training set as the default
duckdb store, row for row, and both equal the point-in-time oracle (corrections, empty created times, exact-time hits,
TTL edges, unknown keys, rows before any data; sealed snapshots). Spark runs in local mode, one JVM for the module."""
import os
import tempfile
import time
from datetime import timedelta

import numpy as np
import pandas as pd
import psutil
import pytest

from helpers import clear_mlplat_env
from test_point_in_time import oracle_by_definition, random_corrections

pytestmark = pytest.mark.services  # starts a JVM (Spark's driver)


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    "Spark's session, started once for the module (the JVM is a module fixture's), stopped and checked gone after."
    from mlplat.config import Config
    from mlplat.features import spark_store
    if spark_store.java_runtime() is None:
        pytest.skip("no Java runtime (JAVA_HOME, PATH): Spark needs Java 17+ (.ci/run installs openjdk-17-jre-headless)")
    cfg = Config.load(home=tmp_path_factory.mktemp("spark-cfg"), env={"MLPLAT_FEAST_OFFLINE_STORE": "spark"})
    t0 = time.perf_counter()
    session = spark_store.spark_session(cfg)
    print(f"\nSpark session started in {time.perf_counter() - t0:.1f} s")
    jvms = [c for c in psutil.Process().children(recursive=True) if "java" in c.name()]
    yield session
    spark_store.stop_spark()
    assert not [p for p in jvms if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "the JVM outlived stop_spark"


def workspace(home, store, monkeypatch):
    "A workspace whose config names `store` as Feast's offline store."
    import mlplat
    monkeypatch.setenv("MLPLAT_FEAST_OFFLINE_STORE", store)
    return mlplat.connect(home)


def readings_with_gaps(seed=0):
    "The point-in-time tests' corrected readings, plus corrections whose created time is empty."
    src, ents = random_corrections(seed, n_keys=120, n_rows=1200, n_ents=1200)
    t = pd.Timestamp("2026-02-01", tz="UTC")
    nulls = pd.DataFrame({"device_id": [500, 500, 500, 501, 501], "event_timestamp": [t, t, t + timedelta(days=1), t, t],
                          "created": [pd.NaT, t + timedelta(hours=1), pd.NaT, pd.NaT, pd.NaT], "temp": [1.0, 2.0, 3.0, 4.0, 4.0]})
    src = pd.concat([src, nulls], ignore_index=True)
    more = pd.DataFrame({"device_id": [500, 500, 500, 501, 501], "label": -1,
                         "event_timestamp": [t, t + timedelta(hours=5), t + timedelta(days=1), t, t - timedelta(microseconds=1)]})
    ents = pd.concat([ents, more], ignore_index=True).assign(label=lambda d: range(len(d)))
    return src, ents


def sites(ents, seed=0):
    "A second source: each device's site and status over time, no created times, a view with no TTL."
    rng = np.random.default_rng(seed)
    keys = np.unique(ents["device_id"])[:-3]  # some devices have no status at all
    t0 = pd.Timestamp("2025-12-20", tz="UTC")
    n = len(keys) * 3
    return pd.DataFrame({"device_id": np.repeat(keys, 3), "event_timestamp": t0 + pd.to_timedelta(rng.integers(0, 40 * 24, n), unit="h"),
                         "status": rng.choice(["ok", "degraded", "down"], n), "errors": rng.integers(0, 50, n)})


def placements(ents):
    """A view keyed by two entities, with key pairs that read alike when written one after the other: (1, 23) and
    (12, 3) at the same times (Feast's Spark SQL identifies entity rows by such a concatenation)."""
    t = pd.Timestamp("2026-01-05", tz="UTC")
    ents["site_id"] = np.where(ents.index % 2 == 0, 3, 23)
    ents.loc[ents.index[:4], ["device_id", "site_id", "event_timestamp"]] = [[1, 23, t], [12, 3, t], [1, 23, t + timedelta(days=1)], [12, 3, t]]
    pairs = ents[["device_id", "site_id"]].drop_duplicates()
    src = pd.concat([pairs.assign(event_timestamp=t - timedelta(days=d), slot=np.arange(len(pairs)) * 10 + d) for d in (1, 3)])
    return src.reset_index(drop=True)


DEFS = {"entities": [{"name": "device", "join_key": "device_id"}, {"name": "site", "join_key": "site_id"}],
        "feature_views": [{"name": "sensor", "entities": ["device"], "source": "readings", "ttl": "2d", "created_timestamp_field": "created",
                           "features": [{"name": "temp", "dtype": "float64"}]},
                          {"name": "site", "entities": ["device"], "source": "sites", "ttl": 0,
                           "features": [{"name": "status", "dtype": "string"}, {"name": "errors", "dtype": "int64"}]},
                          {"name": "placement", "entities": ["device", "site"], "source": "placements", "ttl": "30d",
                           "features": [{"name": "slot", "dtype": "int64"}]}]}
FEATURES = ["sensor:temp", "site:status", "site:errors", "placement:slot"]


def test_spark_training_set_equals_duckdb_and_the_oracle(spark, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clear_mlplat_env(monkeypatch)
    src, ents = readings_with_gaps()
    site, place = sites(ents), placements(ents)
    built, times, online = {}, {}, {}
    private_tmp = tmp_path/"tmp"  # this test's own temporary folder: other tests' Spark reads stage theirs elsewhere
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    for store in ("duckdb", "spark"):
        ws = workspace(tmp_path/store, store, monkeypatch)
        ws.features.register_source("readings", src, classification="internal", timestamp_field="event_timestamp")
        ws.features.register_source("sites", site, classification="internal", timestamp_field="event_timestamp")
        ws.features.register_source("placements", place, classification="internal", timestamp_field="event_timestamp")
        assert ws.features.datasets.get("readings").path.endswith(".enc")  # sealed at rest: Spark reads a staged copy
        ws.features.apply(DEFS)
        t0 = time.perf_counter()
        ts = ws.features.training_set(ents, features=FEATURES, name="readings")
        times[store] = time.perf_counter() - t0
        built[store] = ts.to_df()
        assert ws.features.get_training_set(ts.id).to_df().equals(built[store])  # stored and re-read the same
        # Feast pulls the latest rows through the same store (not `sensor`: Feast's SQLite online store refuses the
        # empty created times of its source, whichever the offline store)
        ws.features.materialize(views=["site"])
        online[store] = ws.features.online([{"device_id": int(d)} for d in (1, 2, 3, 9999)], features=["site:status", "site:errors"],
                                           as_frame=True)
    print(f"\ntraining set of {len(ents)} rows: duckdb {times['duckdb']:.2f} s, spark {times['spark']:.2f} s")
    assert not [d for d in os.listdir(private_tmp) if d.startswith("mlplat-spark-")], "a sealed snapshot's staged copy was left"
    pd.testing.assert_frame_equal(online["spark"], online["duckdb"])
    assert online["spark"]["status"].notna().sum() == 3
    duck, spk = built["duckdb"], built["spark"]
    assert list(spk["label"]) == list(ents["label"])  # every entity row, in the caller's order
    pd.testing.assert_frame_equal(spk, duck)  # row for row, values and types
    exp = oracle_by_definition(ents, src, "device_id", ["temp"], "2D", created="created")
    np.testing.assert_array_equal(spk["temp"].to_numpy(), exp["temp"].to_numpy())
    exp = oracle_by_definition(ents, site, "device_id", ["status", "errors"], None)
    assert (spk["status"].fillna("-") == exp["status"].fillna("-")).all()
    np.testing.assert_array_equal(spk["errors"].astype(float).to_numpy(), exp["errors"].astype(float).to_numpy())
    pair = lambda d: d.assign(pair=d["device_id"] * 1000 + d["site_id"])  # noqa: E731
    exp = oracle_by_definition(pair(ents), pair(place), "pair", ["slot"], "30D")
    np.testing.assert_array_equal(spk["slot"].astype(float).to_numpy(), exp["slot"].astype(float).to_numpy())
    assert spk["slot"].head(4).tolist() != [spk["slot"].iloc[0]] * 4  # the look-alike pairs got their own values
    tail = spk.tail(5)  # the empty-created corrections: the created one wins a tie, an empty one still counts alone
    np.testing.assert_array_equal(tail["temp"].to_numpy(), [2.0, 2.0, 3.0, 4.0, np.nan])
    assert spk["temp"].isna().any() and spk["status"].isna().any() and spk["temp"].notna().sum() > len(spk) // 2
