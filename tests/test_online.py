"""Online serving paths: incremental materialization, lookups, and streaming pushes without materialization."""
import pandas as pd
import pytest

from mlplat.errors import NotFoundError, ValidationError


def test_materialize_is_incremental_and_lookup_matches_latest_values(churn_ws, churn):
    first = churn_ws.features.materialize()
    assert sorted(first["views"]) == ["customer_activity", "customer_profile"]
    recent = churn.transactions[churn.transactions.event_timestamp >= pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=7)]
    latest = recent.sort_values("event_timestamp").groupby("customer_id").tail(1).set_index("customer_id")
    ids = list(latest.index[:20])
    got = churn_ws.features.online([{"customer_id": i} for i in ids], service="churn_v1", as_frame=True).set_index("customer_id")
    pd.testing.assert_series_equal(got.loc[ids, "spend_7d"], latest.loc[ids, "spend_7d"], check_names=False)
    prof = churn.customers.set_index("customer_id")
    assert (got.loc[ids, "plan"] == prof.loc[ids, "plan"]).all()
    # a second run continues from the first run's end: nothing to do, values unchanged
    churn_ws.features.materialize(["customer_activity"])
    again = churn_ws.features.online({"customer_id": ids}, features=["customer_activity:spend_7d"])
    assert again["spend_7d"] == list(latest.loc[ids, "spend_7d"])
    actions = [r["action"] for r in churn_ws.audit.records(limit=5)]
    assert actions.count("features.materialize") == 2


def test_push_updates_online_values_without_materialization(churn_ws, churn):
    cid = 7
    before = churn_ws.features.online([{"customer_id": cid}], features=["customer_activity:spend_7d"])["spend_7d"][0]
    assert before is None  # never materialized
    ev = pd.DataFrame({"customer_id": [cid, cid], "event_timestamp": [pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=5),
                                                                     pd.Timestamp.now(tz="UTC")],
                       "spend_7d": [10.0, 42.5], "transactions_7d": [1, 2], "tickets_7d": [0, 1]})
    assert churn_ws.features.push("customer_activity", ev)["rows"] == 2
    got = churn_ws.features.online([{"customer_id": cid}], features=["customer_activity:spend_7d", "customer_activity:tickets_7d"])
    assert got["spend_7d"] == [42.5] and got["tickets_7d"] == [1]
    assert churn_ws.audit.records(limit=1)[0]["action"] == "features.push"


def test_online_and_push_errors(churn_ws):
    with pytest.raises(ValidationError, match="does not accept pushes"):
        churn_ws.features.push("customer_profile", pd.DataFrame({"customer_id": [1]}))
    with pytest.raises(ValidationError, match=r"lack column\(s\) \['spend_7d'"):
        churn_ws.features.push("customer_activity", pd.DataFrame({"customer_id": [1], "event_timestamp": [pd.Timestamp.now(tz="UTC")]}))
    with pytest.raises(NotFoundError, match="no feature view named 'nope'"):
        churn_ws.features.online([{"customer_id": 1}], features=["nope:x"])
    with pytest.raises(NotFoundError, match="has no feature 'height'"):
        churn_ws.features.online([{"customer_id": 1}], features=["customer_profile:height"])
    with pytest.raises(ValidationError, match="no entity rows"):
        churn_ws.features.online([], service="churn_v1")


def test_apply_from_another_process_is_seen_without_restart(churn_ws, home):
    import mlplat
    churn_ws.features.materialize(["customer_profile"])
    churn_ws.features.online([{"customer_id": 1}], features=["customer_profile:age"])  # caches Feast's registry
    other = mlplat.connect(home)  # another client (the CLI, a pipeline) with its own Feast registry cache
    other.features.apply({"feature_views": [{"name": "profile_copy", "entities": ["customer"], "source": "customers",
                                             "ttl": "3650d", "features": [{"name": "age", "dtype": "int64"}]}]})
    other.features.materialize(["profile_copy"])
    got = churn_ws.features.online([{"customer_id": 1}], features=["profile_copy:age"])
    assert got["age"] == churn_ws.features.online([{"customer_id": 1}], features=["customer_profile:age"])["age"]


def test_new_view_version_is_loaded_in_full_and_lookups_see_new_features(ws):
    now = pd.Timestamp.now(tz="UTC").floor("s")
    ws.features.register_source("prices", pd.DataFrame({"sku": ["0042", "0007"], "event_timestamp": [now - pd.Timedelta(hours=2)] * 2,
                                                        "price": [1.0, 2.0]}), classification="internal", timestamp_field="event_timestamp")
    defs = {"entities": [{"name": "item", "join_key": "sku", "value_type": "string"}],
            "feature_views": [{"name": "p", "entities": ["item"], "source": "prices", "features": [{"name": "price", "dtype": "float64"}]}]}
    ws.features.apply(defs)
    assert ws.features.materialize()["full"] == ["p"]  # first load: the whole snapshot (ttl 0 = no expiry)
    assert ws.features.online([{"sku": "0042"}], features=["p"])["price"] == [1.0]
    ws.features.register_source("prices", pd.DataFrame({"sku": ["0042", "0007"], "event_timestamp": [now - pd.Timedelta(hours=1)] * 2,
                                                        "price": [1.5, 2.5], "qty": [3.0, 4.0]}), classification="internal",
                                timestamp_field="event_timestamp")
    defs["feature_views"][0]["features"].append({"name": "qty", "dtype": "float64"})
    assert ws.features.apply(defs).created == ["feature_view:p@2"]
    assert ws.features.materialize()["full"] == ["p"]  # a new version is loaded in full, not incrementally
    got = ws.features.online([{"sku": "0042"}], features=["p"])  # same workspace object: no stale cached refs
    assert got["price"] == [1.5] and got["qty"] == [3.0]
    assert ws.features.materialize()["full"] == []  # unchanged version: incremental
    # string keys stay strings end to end, including digit-only ids
    assert ws.features.online({"sku": ["0007"]}, features=["p:price"])["price"] == [2.5]
    ts = ws.features.training_set(pd.DataFrame({"sku": [42, "0007"], "event_timestamp": [now, now]}), features=["p:price"], name="px")
    assert list(ts.to_df()["price"].isna()) == [True, False]  # 42 -> "42", which is not "0042"


def test_entity_key_change_that_would_strand_views_is_refused(churn_ws):
    with pytest.raises(ValidationError, match="would break feature view"):
        churn_ws.features.apply({"entities": [{"name": "customer", "join_key": "client_id"}]})
    assert churn_ws.features.list("entity")[0]["join_key"] == "customer_id"


def test_bad_pushed_values_are_refused_clearly(churn_ws):
    ev = pd.DataFrame({"customer_id": ["x"], "event_timestamp": [pd.Timestamp.now(tz="UTC")], "spend_7d": [1.0],
                       "transactions_7d": [1], "tickets_7d": [0]})
    with pytest.raises(ValidationError, match="pushed 'customer_id' should hold int64"):
        churn_ws.features.push("customer_activity", ev)
    with pytest.raises(ValidationError, match="pushed 'spend_7d' should hold float64"):
        churn_ws.features.push("customer_activity", ev.assign(customer_id=1, spend_7d="n/a"))


def test_sealed_snapshots_are_materialized_as_streams_with_feasts_semantics(ws, monkeypatch):
    "The latest row of each key, a late correction winning and an empty created time losing, from a stream."
    from mlplat.governance.crypto import Sealer
    t, h = pd.Timestamp.now(tz="UTC").floor("s") - pd.Timedelta(days=1), pd.Timedelta(hours=1)
    src = pd.DataFrame({"device_id": [1, 1, 1, 2, 2],
                        "event_timestamp": [t - 2 * h, t, t, t - h, t - h],
                        "created": [t, t + h, t + 2 * h, t, pd.NaT],
                        "temp": [1.0, 2.0, 3.0, 4.0, 5.0]})
    ws.features.register_source("readings", src, classification="internal", timestamp_field="event_timestamp")
    ws.features.apply({"entities": [{"name": "device", "join_key": "device_id"}],
                       "feature_views": [{"name": "sensor", "entities": ["device"], "source": "readings", "ttl": "3650d",
                                          "online": True, "created_timestamp_field": "created",
                                          "features": [{"name": "temp", "dtype": "float64"}]}]})
    path = ws.features.datasets.get("readings").path
    assert ws.crypto.enabled and path.endswith(".enc")
    whole, real = [], Sealer.open_bytes
    monkeypatch.setattr(Sealer, "open_bytes", lambda self, p, *a, **k: (whole.append(str(p)), real(self, p, *a, **k))[1])
    ws.features.materialize()
    assert path not in whole
    assert ws.features.online([{"device_id": 1}, {"device_id": 2}], features=["sensor:temp"])["temp"] == [3.0, 4.0]
