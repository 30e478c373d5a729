"""A Spark driver that runs out of memory fails the read with a clear error, instead of leaving it waiting forever
(Spark's thread serving the result to Python dies, the JVM lives on), and the next read starts a new session.
Spark runs in local mode with the smallest heap it accepts; the training set's one string feature is far larger."""
import tempfile
import threading
import time

import numpy as np
import pandas as pd
import psutil
import pytest

from helpers import clear_mlplat_env

pytestmark = pytest.mark.services  # starts JVMs (Spark's driver)

DEFS = {"entities": [{"name": "doc", "join_key": "doc_id"}],
        "feature_views": [{"name": "doc", "entities": ["doc"], "source": "docs", "ttl": 0,
                           "features": [{"name": "body", "dtype": "string"}]}]}


def jvms():
    "This process's live Java children."
    alive = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "java" in p.name() and p.status() != psutil.STATUS_ZOMBIE: alive.append(p)
        except psutil.NoSuchProcess: pass
    return alive


def build(ws, ents, name, limit=300):
    "The training set (or the error) of `ents`, failing the test if the read has not ended after `limit` s."
    out = {}
    def run():
        try: out["set"] = ws.features.training_set(ents, features=["doc:body"], name=name)
        except Exception as e: out["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start(); t.join(limit)
    if t.is_alive():  # end the JVM, or the waiting read would keep Spark's lock and stop_spark would wait forever too
        for p in jvms(): p.kill()
        t.join(60)
        pytest.fail(f"the Spark read still waited after {limit} s")
    return out


def test_out_of_memory_fails_clearly_and_the_next_read_starts_again(tmp_path, monkeypatch):
    import mlplat
    from mlplat.errors import ConfigError
    from mlplat.features import spark_store
    from mlplat.features.feast_repo import spark_driver_memory
    if spark_store.java_runtime() is None:
        pytest.skip("no Java runtime (JAVA_HOME, PATH): Spark needs Java 17+ (.ci/run installs openjdk-17-jre-headless)")
    spark_store.stop_spark()  # a session of another test's configuration would not have this heap
    monkeypatch.chdir(tmp_path)
    (tmp_path/"tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path/"tmp"))  # sealed snapshots' staged copies: not in the shared /tmp
    clear_mlplat_env(monkeypatch)
    monkeypatch.setenv("MLPLAT_FEAST_OFFLINE_STORE", "spark")
    monkeypatch.setenv("MLPLAT_FEAST_SPARK_DRIVER_MEMORY", "512m")
    ws = mlplat.connect(tmp_path/"ws")
    n, t0 = 8000, pd.Timestamp("2026-01-01", tz="UTC")  # 8000 bodies of 64 KiB: 512 MiB of text in the driver
    ws.features.register_source("docs", pd.DataFrame({"doc_id": np.arange(n), "event_timestamp": t0,
                                                      "body": [f"{i:08d}" + "x" * 65536 for i in range(n)]}),
                                classification="internal", timestamp_field="event_timestamp")
    ws.features.apply(DEFS)
    ents = pd.DataFrame({"doc_id": np.arange(n), "event_timestamp": t0 + pd.Timedelta(days=1)})
    try:
        t = time.perf_counter()
        got = build(ws, ents, "wide")
        err = got.get("error")
        assert isinstance(err, ConfigError), got
        assert "ran out of memory (heap 512m)" in str(err) and "feast.spark_driver_memory" in err.hint
        print(f"\nout of memory reported after {time.perf_counter() - t:.1f} s")
        assert spark_store._session is None and not jvms(), "the ended driver's session was not cleared"
        assert not ws.features.training_sets("wide"), "a failed read left a training set version behind"
        audit = [r for r in ws.audit.records(newest_first=True) if r["action"] == "training_sets.create"]
        assert audit[0]["resource"] == "training_set:wide" and audit[0]["outcome"] == "failed", audit[:1]

        monkeypatch.delenv("MLPLAT_FEAST_SPARK_DRIVER_MEMORY")  # the default: a quarter of the machine's memory
        ws = mlplat.connect(tmp_path/"ws")  # a new workspace object reads the new configuration
        again = build(ws, ents.head(200), "narrow")
        assert "set" in again, again
        assert again["set"].rows == 200 and again["set"].to_df()["body"].str.len().eq(8 + 65536).all()
        heap = spark_store.spark_session(ws.config).sparkContext.getConf().get("spark.driver.memory")
        assert heap == spark_driver_memory(ws.config) != "512m", heap
    finally:
        spark_store.stop_spark()
    assert not jvms(), "a JVM outlived stop_spark"
    assert not [d for d in (tmp_path/"tmp").iterdir() if d.name.startswith("mlplat-spark-")], "a staged copy was left"
