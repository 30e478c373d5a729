"""Point-in-time correctness of training sets, checked against independent oracles: one written from the definition
with plain loops (corrections, exact-time hits, duplicates, unknown keys, TTL edges), and pandas merge_asof."""
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlplat.errors import ValidationError


def expected_by_merge_asof(entity_df, source, key, features, ttl):
    "Latest source row with ts <= event time and ts >= event time - ttl, per entity row; caller order kept."
    e = entity_df.reset_index(drop=True).assign(_row=lambda d: range(len(d))).sort_values("event_timestamp", kind="stable")
    s = source[[key, "event_timestamp", *features]].rename(columns={"event_timestamp": "_fts"}).sort_values("_fts")
    m = pd.merge_asof(e, s, left_on="event_timestamp", right_on="_fts", by=key, direction="backward",
                      tolerance=pd.Timedelta(ttl) if ttl else None, allow_exact_matches=True)
    return m.sort_values("_row").reset_index(drop=True)[features]


def oracle_by_definition(entity_df, source, key, features, ttl, created=None):
    """Feast's point-in-time semantics, from the definition, one entity row at a time: among the source rows of the
    row's key whose event time is at or before the row's time and, when `ttl` is set, at least the row's time minus
    `ttl` (both edges inclusive), the one with the latest event time; ties broken by the latest created time (an empty
    created time loses). No such row: nulls. Rows are returned in the entity frame's order."""
    by_key = defaultdict(list)
    for r in source.to_dict("records"): by_key[r[key]].append(r)
    ttl = pd.Timedelta(ttl) if ttl else None
    out = []
    for e in entity_df.to_dict("records"):
        t, best, best_rank = e["event_timestamp"], None, None
        for r in by_key.get(e[key], []):
            if r["event_timestamp"] > t or (ttl is not None and r["event_timestamp"] < t - ttl): continue
            made = r[created] if created and not pd.isna(r[created]) else pd.Timestamp.min.tz_localize("UTC")
            rank = (r["event_timestamp"], made)
            if best is None or rank > best_rank: best, best_rank = r, rank
        out.append({f: (best[f] if best is not None else np.nan) for f in features})
    return pd.DataFrame(out, columns=features)


def join_in_slices(monkeypatch, rows: int = 100) -> list:
    """Make the duckdb store join a slice of the join keys at a time beyond `rows` entity rows (as beyond a million);
    the list returned gets the index of each view joined that way."""
    from mlplat.features import asof_store
    monkeypatch.setattr(asof_store, "PART_ROWS", rows)
    views, real = [], asof_store.in_slices
    monkeypatch.setattr(asof_store, "in_slices", lambda s, ts, i, *a: (views.append(i), real(s, ts, i, *a))[1])
    return views


@pytest.fixture(params=["duckdb", "duckdb-sliced", "file"])
def store_ws(request, home, monkeypatch):
    "A workspace on each of Feast's offline stores mlplat supports (duckdb's also joining in slices of keys)."
    import mlplat
    monkeypatch.setenv("MLPLAT_FEAST_OFFLINE_STORE", request.param.split("-")[0])
    if request.param.endswith("-sliced"): join_in_slices(monkeypatch)
    return mlplat.connect(home)


def register_readings(ws, src, ttl, name="readings", created="created"):
    ws.features.register_source(name, src, classification="internal", timestamp_field="event_timestamp")
    ws.features.apply({"entities": [{"name": "device", "join_key": "device_id"}],
                       "feature_views": [{"name": "sensor", "entities": ["device"], "source": name, "ttl": ttl,
                                          "created_timestamp_field": created, "features": [{"name": "temp", "dtype": "float64"}]}]})


def test_corrections_exact_hits_duplicates_and_edges(store_ws):
    ws = store_ws
    t, h = pd.Timestamp("2026-03-01", tz="UTC"), timedelta(hours=1)
    rows = [  # (device, event time, created time, temp); file order deliberately not the created order
        (1, t, t + 2 * h, 12.0),          # correction of the reading at t: the latest created wins
        (1, t, t, 10.0),
        (1, t, t + h, 11.0),
        (1, t + timedelta(days=1), t + timedelta(days=1), 20.0),
        (1, t + timedelta(days=1), t + timedelta(days=1), 20.0),   # an exact duplicate
        (2, t, t, 30.0),
        (3, t, t + timedelta(days=9), 41.0),  # corrected 9 days later: still wins at t (Feast does not filter by created time)
        (3, t, t, 40.0),
    ]
    src = pd.DataFrame(rows, columns=["device_id", "event_timestamp", "created", "temp"])
    register_readings(ws, src, "2d")
    us = timedelta(microseconds=1)
    cases = [  # (device, entity time, expected temp)
        (1, t, 12.0),                               # exact-time hit on a corrected reading
        (1, t + 12 * h, 12.0),
        (1, t + timedelta(days=1), 20.0),           # exact-time hit on an exact duplicate
        (1, t - us, np.nan),                        # before any data
        (99, t, np.nan),                            # unknown device: row kept, nulls
        (2, t + timedelta(days=2), 30.0),           # exactly at the TTL edge: kept (inclusive, as Feast)
        (2, t + timedelta(days=2) + us, np.nan),    # one microsecond past it
        (3, t + timedelta(days=1), 41.0),
        (1, t, 12.0),                               # a duplicate entity row
    ]
    ents = pd.DataFrame(cases, columns=["device_id", "event_timestamp", "want"]).assign(label=lambda d: range(len(d)))
    got = ws.features.training_set(ents.drop(columns="want"), features=["sensor:temp"], name="corrections").to_df()
    assert list(got["label"]) == list(range(len(cases)))
    np.testing.assert_array_equal(got["temp"].to_numpy(), ents["want"].to_numpy())
    exp = oracle_by_definition(ents, src, "device_id", ["temp"], "2D", created="created")
    np.testing.assert_array_equal(exp["temp"].to_numpy(), ents["want"].to_numpy())  # the oracle agrees with the hand values


def random_corrections(seed, n_keys=150, n_rows=1500, n_ents=1500):
    "A source where many (key, event time) pairs were corrected later, and entity rows hitting, missing and edging them."
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    ev = t0 + pd.to_timedelta(rng.integers(0, 20, n_rows), unit="D")
    src = pd.DataFrame({"device_id": rng.integers(1, n_keys, n_rows), "event_timestamp": ev,
                        "created": ev + pd.to_timedelta(rng.integers(0, 100, n_rows), unit="h"),
                        "temp": rng.normal(20, 5, n_rows).round(3)})
    src = src.drop_duplicates(["device_id", "event_timestamp", "created"])  # equal (key, event, created): no defined winner
    src = pd.concat([src, src.sample(20, random_state=seed)]).sample(frac=1.0, random_state=seed)  # exact duplicates, shuffled
    hits = src.sample(n_ents, replace=True, random_state=seed)[["device_id", "event_timestamp"]].reset_index(drop=True)
    shift = rng.choice([0, 0, 12, 48, 49, -1], len(hits))  # exact hits, later, exactly at a 2-day TTL, past it, before
    hits["event_timestamp"] = hits["event_timestamp"] + pd.to_timedelta(shift, unit="h")
    unknown = pd.DataFrame({"device_id": [n_keys + 1, n_keys + 2], "event_timestamp": [t0, t0 + timedelta(days=5)]})
    ents = pd.concat([hits, unknown], ignore_index=True).assign(label=lambda d: range(len(d)))
    return src.reset_index(drop=True), ents


@pytest.mark.parametrize("seed", [0, 1])
def test_random_corrections_match_the_definition(store_ws, seed):
    ws = store_ws
    src, ents = random_corrections(seed)
    register_readings(ws, src, "2d")
    got = ws.features.training_set(ents, features=["sensor:temp"], name="random").to_df()
    assert list(got["label"]) == list(ents["label"])
    exp = oracle_by_definition(ents, src, "device_id", ["temp"], "2D", created="created")
    np.testing.assert_array_equal(got["temp"].to_numpy(), exp["temp"].to_numpy())
    if ws.config.feast.offline_store == "duckdb":  # Feast's own DuckDB store on the same registered data agrees, row for row
        from feast.infra.offline_stores.duckdb import DuckDBOfflineStore
        from mlplat.features.feast_repo import staged
        store = ws.features.store
        with staged(ws.crypto, [ws.features.datasets.get("readings").path]):
            feast = DuckDBOfflineStore.get_historical_features(store.config, [store.get_feature_view("sensor")], ["sensor:temp"],
                                                               ents, store.registry, store.project).to_df()
        assert len(feast) == len(ents)  # this store drops no row here
        feast = feast.set_index("label").reindex(ents["label"])
        np.testing.assert_array_equal(feast["temp"].to_numpy(), exp["temp"].to_numpy())


def test_handcrafted_ttl_unknown_and_order(ws):
    t = pd.Timestamp("2026-03-01", tz="UTC")
    src = pd.DataFrame({"device_id": [1, 1, 2, 3], "event_timestamp": [t, t + timedelta(days=5), t, t + timedelta(days=9)],
                        "temp": [20.0, 25.0, 30.0, 35.0]})
    ws.features.register_source("readings", src, classification="internal", timestamp_field="event_timestamp")
    ws.features.apply({"entities": [{"name": "device", "join_key": "device_id"}],
                       "feature_views": [{"name": "sensor", "entities": ["device"], "source": "readings", "ttl": "2d",
                                          "features": [{"name": "temp", "dtype": "float64"}]}]})
    ents = pd.DataFrame({"device_id": [2, 1, 99, 1, 2, 3, 1, 1],
                         "event_timestamp": [t + timedelta(days=1),   # 2: inside TTL -> 30
                                             t + timedelta(days=6),   # 1: newer value -> 25
                                             t + timedelta(days=1),   # unknown entity -> null
                                             t + timedelta(days=1),   # 1: first value -> 20
                                             t + timedelta(days=3),   # 2: value is 3 days old, TTL 2d -> null
                                             t + timedelta(days=1),   # 3: value only in the future -> null
                                             t + timedelta(days=6),   # duplicate of row 2 -> 25
                                             t + timedelta(days=2)],  # exactly at the TTL edge -> 20
                         "label": list("abcdefgh")})
    ts = ws.features.training_set(ents, features=["sensor:temp"], name="pit")
    got = ts.to_df()
    assert len(got) == len(ents) == ts.rows
    assert list(got["label"]) == list("abcdefgh")  # caller's order and extra columns kept
    np.testing.assert_array_equal(got["temp"].to_numpy(), [30.0, 25.0, np.nan, 20.0, np.nan, np.nan, 25.0, 20.0])
    exp = expected_by_merge_asof(ents, src, "device_id", ["temp"], "2D")
    np.testing.assert_array_equal(got["temp"].to_numpy(), exp["temp"].to_numpy())


@pytest.mark.parametrize("sliced", [False, True])
def test_synthetic_multi_view_matches_merge_asof(churn_ws, churn, sliced, monkeypatch):
    views = join_in_slices(monkeypatch, 50) if sliced else []
    rng = np.random.default_rng(3)
    ents = churn.labels.sample(frac=1.0, random_state=5).reset_index(drop=True)  # shuffled order
    # add unknown customers and times before any data
    extra = pd.DataFrame({"customer_id": [10_001, 10_002, 1], "churned": [0, 1, 0],
                          "event_timestamp": [ents.event_timestamp.iloc[0]] * 2 + [pd.Timestamp("2000-01-01", tz="UTC")]})
    ents = pd.concat([ents, extra], ignore_index=True)
    ts = churn_ws.features.training_set(ents, service="churn_v1", name="churn")
    got = ts.to_df()
    assert ts.rows == len(ents) == len(got)
    pd.testing.assert_frame_equal(got[["customer_id", "churned"]], ents[["customer_id", "churned"]], check_dtype=False)
    prof = expected_by_merge_asof(ents, churn.customers, "customer_id", ["age", "plan", "monthly_fee"], "3650D")
    act = expected_by_merge_asof(ents, churn.transactions, "customer_id", ["spend_7d", "transactions_7d", "tickets_7d"], "7D")
    for col in ["age", "monthly_fee", "spend_7d", "transactions_7d", "tickets_7d"]:
        np.testing.assert_allclose(got[col].astype(float).to_numpy(), act[col].astype(float).to_numpy() if col in act else
                                   prof[col].astype(float).to_numpy(), equal_nan=True, err_msg=col)
    assert (got["plan"].fillna("<null>") == prof["plan"].fillna("<null>")).all()
    # the cases Feast alone drops come back as nulls instead of vanishing
    assert got["spend_7d"].isna().sum() > 0
    assert got.tail(3)[["age", "spend_7d"]].isna().all().all()
    assert views == ([0, 1] if sliced else [])
    # profile values survive even when activity is outside its TTL (Feast drops the whole row)
    both = got[got["spend_7d"].isna() & got["customer_id"].le(300) & got["event_timestamp"].gt(pd.Timestamp("2001-01-01", tz="UTC"))]
    assert len(both) and both["age"].notna().all()
    _ = rng


def test_training_set_versions_and_lineage(churn_ws, churn):
    ents = churn.labels.head(50)
    a = churn_ws.features.training_set(ents, service="churn_v1", name="small")
    b = churn_ws.features.training_set(ents, service="churn_v1", name="small")
    c = churn_ws.features.training_set(churn.labels.head(60), service="churn_v1", name="small")
    assert (a.id, b.id, c.id) == ("small@1", "small@1", "small@2")
    assert a.lineage["feature_views"] == {"customer_profile": 1, "customer_activity": 1}
    assert a.lineage["datasets"] == ["customers@1", "transactions@1"]
    assert a.classification == "personal"
    g = churn_ws.lineage.of(a)
    assert {"dataset:customers@1", "dataset:transactions@1", "feature_view:customer_activity@1"} <= set(g["upstream_nodes"])
    down = churn_ws.lineage.of("dataset:transactions@1")["downstream_nodes"]
    assert "training_set:small@1" in down and "feature_service:churn_v1@1" in down
    assert churn_ws.features.get_training_set("small").id == "small@2"
    reread = churn_ws.features.get_training_set("small@1")
    pd.testing.assert_frame_equal(reread.to_df(), a.to_df())  # from disk, hash-verified, equal to the built frame
    from mlplat.errors import AuditIntegrityError
    stored = Path(reread.path)
    assert stored.name.endswith(".parquet.enc") and b"PAR1" not in stored.read_bytes()  # sealed at rest
    data = bytearray(stored.read_bytes()); data[-40] ^= 0x01; stored.write_bytes(bytes(data))  # tamper with one bit
    with pytest.raises(AuditIntegrityError, match="failed authentication"):
        churn_ws.features.get_training_set("small@1").to_df()
    refused = churn_ws.audit.records(1)[0]
    assert (refused["action"], refused["outcome"]) == ("crypto.open", "denied") and "failed authentication" in refused["details"]["reason"]


def test_entity_frame_errors(churn_ws, churn):
    with pytest.raises(ValidationError, match="lacks column"):
        churn_ws.features.training_set(churn.labels.drop(columns=["customer_id"]), service="churn_v1")
    with pytest.raises(ValidationError, match="collide"):
        churn_ws.features.training_set(churn.labels.assign(age=1), service="churn_v1")
    got = churn_ws.features.training_set(churn.labels.head(5).assign(age=1), service="churn_v1", full_feature_names=True).to_df()
    assert "customer_profile__age" in got.columns and (got["age"] == 1).all()
    with pytest.raises(ValidationError, match="no rows"):
        churn_ws.features.training_set(churn.labels.head(0), service="churn_v1")


def test_new_source_version_flows_into_a_new_view_version(churn_ws, churn):
    from mlplat.demo import churn_definitions
    old = churn_ws.features.training_set(churn.labels.head(20), features=["customer_profile:age"], name="ages")
    v2 = churn_ws.features.register_source("customers", churn.customers.assign(age=churn.customers.age + 1),
                                           classification="personal", timestamp_field="event_timestamp")
    assert v2.id == "customers@2"
    res = churn_ws.features.apply(churn_definitions())
    assert res.created == ["feature_view:customer_profile@2", "feature_service:churn_v1@2"]
    assert churn_ws.features.show("customer_profile")["definition"]["source"] == "customers@2"
    new = churn_ws.features.training_set(churn.labels.head(20), features=["customer_profile:age"], name="ages")
    assert new.id == "ages@2" and new.lineage["datasets"] == ["customers@2"]
    assert (new.to_df()["age"] == old.to_df()["age"] + 1).all()
    assert old.to_df()["age"].notna().all()  # the old version is untouched and still readable


@pytest.mark.parametrize("sliced", [False, True])
def test_sealed_sources_are_streamed_and_tampering_is_refused(ws, monkeypatch, sliced):
    "With encryption at rest (the default), the duckdb store reads a sealed source as a stream, never decrypted whole."
    views = join_in_slices(monkeypatch, 20) if sliced else []   # the tampered build below is sliced too
    from mlplat.errors import AuditIntegrityError
    from mlplat.governance.crypto import Sealer
    assert ws.crypto.enabled and ws.config.feast.offline_store == "duckdb"
    src, ents = random_corrections(3)
    register_readings(ws, src, "2d")
    path = Path(ws.features.datasets.get("readings").path)
    assert path.name.endswith(".parquet.enc")
    whole, real = [], Sealer.open_bytes
    monkeypatch.setattr(Sealer, "open_bytes", lambda self, p, *a, **k: (whole.append(str(p)), real(self, p, *a, **k))[1])
    got = ws.features.training_set(ents, features=["sensor:temp"], name="sealed").to_df()
    assert str(path) not in whole and views == ([0] if sliced else [])
    exp = oracle_by_definition(ents, src, "device_id", ["temp"], "2D", created="created")
    np.testing.assert_array_equal(got["temp"].to_numpy(), exp["temp"].to_numpy())
    raw = bytearray(path.read_bytes()); raw[len(raw) // 2] ^= 1; path.write_bytes(bytes(raw))
    with pytest.raises(AuditIntegrityError, match="failed authentication"):  # mlplat's error, not DuckDB's account of it
        ws.features.training_set(ents.iloc[:50], features=["sensor:temp"], name="sealed")
    assert [t.version for t in ws.features.training_sets("sealed")] == [1]
    assert not list(Path(ws.config.home, "data", "training_sets", "sealed").glob(".staged-*"))  # no stray file either
