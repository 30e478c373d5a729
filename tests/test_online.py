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
