"""The `mlplat` command end to end, as a user runs it: real subprocesses, real files, exit codes, --json."""
import json
import sqlite3
import subprocess

import pytest

from helpers import BIN, REPO, run_cli


def j(p):
    return json.loads(p.stdout)


def test_init_is_idempotent_and_info(home):
    first = j(run_cli("init", "--json", check=0))
    assert first["home"] == str(home) and first["roles"] == ["admin"] and first["region"] == "ae-dubai-1"
    toml = (home / "mlplat.toml").read_text()
    for f in ["mlplat.toml", "platform.db", "mlflow.db", "feast/feature_store.yaml"]:
        assert (home / f).exists(), f
    assert j(run_cli("init", "--json", check=0)) == first
    assert (home / "mlplat.toml").read_text() == toml
    assert j(run_cli("info", "--json", check=0))["platform_db"] == f"sqlite:///{home}/platform.db"
    assert "MLPLAT_MLFLOW_TRACKING_URI" in run_cli("config", "docs", check=0).stdout


@pytest.mark.slow
def test_feature_store_workflow(home, churn, tmp_path):
    churn.customers.to_csv(tmp_path / "customers.csv", index=False)
    churn.transactions.to_parquet(tmp_path / "transactions.parquet")
    churn.labels.to_parquet(tmp_path / "labels.parquet")
    reg = j(run_cli("datasets", "register", "customers", tmp_path / "customers.csv", "--classification", "personal",
                    "--timestamp-field", "event_timestamp", "--json", check=0))
    assert (reg["id"], reg["rows"], reg["classification"]) == ("customers@1", len(churn.customers), "personal")
    again = j(run_cli("datasets", "register", "customers", tmp_path / "customers.csv", "--classification", "personal",
                      "--timestamp-field", "event_timestamp", "--json", check=0))
    assert again["id"] == "customers@1" and again["content_hash"] == reg["content_hash"]
    run_cli("datasets", "register", "transactions", tmp_path / "transactions.parquet", "--classification", "personal",
            "--timestamp-field", "event_timestamp", check=0)
    con = sqlite3.connect(tmp_path / "crm.db")
    churn.customers.assign(event_timestamp=churn.customers.event_timestamp.astype(str)).to_sql("customers", con, index=False)
    con.close()
    sql = j(run_cli("datasets", "register", "vip_customers", "--sql", "SELECT * FROM customers WHERE plan = 'enterprise'",
                    "--url", f"sqlite:///{tmp_path}/crm.db", "--classification", "personal", "--timestamp-field", "event_timestamp",
                    "--json", check=0))
    assert sql["source_kind"] == "sql" and 0 < sql["rows"] < len(churn.customers)
    listed = j(run_cli("datasets", "list", "--json", check=0))
    assert [d["id"] for d in listed] == ["customers@1", "transactions@1", "vip_customers@1"]
    assert "customers  1" in run_cli("datasets", "list", check=0).stdout

    applied = run_cli("features", "apply", REPO / "templates/features/churn_features.yaml", "--json", check=0)
    assert j(applied)["created"] == ["entity:customer@1", "feature_view:customer_profile@1", "feature_view:customer_activity@1",
                                     "feature_service:churn_v1@1"]
    views = j(run_cli("features", "list", "--json", check=0))
    assert [(v["name"], v["version"], v["source"]) for v in views] == [("customer_activity", 1, "transactions@1"),
                                                                       ("customer_profile", 1, "customers@1")]
    # the generated repo is a real Feast repo
    feast = subprocess.run([str(BIN / "feast"), "feature-views", "list"], cwd=home / "feast", capture_output=True, text=True, timeout=300)
    assert feast.returncode == 0, feast.stderr
    assert "customer_activity" in feast.stdout and "customer_profile" in feast.stdout

    # a .py definitions file: change the owner -> version 2 of that view only
    (tmp_path / "defs.py").write_text(
        "from mlplat.features.definitions import Entity, Feature, FeatureView\n"
        "customer = Entity('customer', join_key='customer_id', description='A subscriber')\n"
        "profile = FeatureView('customer_profile', entities=['customer'], source='customers', ttl='3650d', owner='data-team',\n"
        "                      description='Static customer attributes', tags={'domain': 'customer'},\n"
        "                      features=[Feature('age', 'int64'), Feature('plan', 'string'), Feature('monthly_fee', 'float64')])\n")
    out = run_cli("features", "apply", tmp_path / "defs.py", check=0).stdout
    assert "created    feature_view:customer_profile@2" in out and "unchanged  entity:customer@1" in out
    assert "created    feature_service:churn_v1@2" in out  # the service serving that view is re-pinned
    versions = j(run_cli("features", "versions", "customer_profile", "--json", check=0))
    assert [v["definition"]["owner"] for v in versions] == ["crm-team", "data-team"]
    show = j(run_cli("features", "show", "customer_activity", "--json", check=0))
    assert show["definition"]["push"] is True and "dataset:transactions@1" in show["lineage"]["upstream_nodes"]

    ts = j(run_cli("features", "training-set", "--entities", tmp_path / "labels.parquet", "--service", "churn_v1",
                   "--name", "churn", "--json", check=0))
    assert ts["id"] == "churn@1" and ts["rows"] == len(churn.labels)
    assert [t["id"] for t in j(run_cli("features", "training-sets", "--json", check=0))] == ["churn@1"]
    lin = j(run_cli("lineage", "training_set:churn@1", "--json", check=0))
    assert "dataset:customers@1" in lin["upstream_nodes"]

    mat = j(run_cli("features", "materialize", "--json", check=0))
    assert sorted(mat["views"]) == ["customer_activity", "customer_profile"]
    latest = churn.transactions.sort_values("event_timestamp").iloc[-1]  # a customer active within the 7-day TTL
    cid = int(latest.customer_id)
    online = j(run_cli("features", "online", "--service", "churn_v1", "--entity", f"customer_id={cid}", "--json", check=0))
    expected = churn.customers.set_index("customer_id").loc[cid]
    assert online["age"] == [int(expected.age)] and online["plan"] == [expected.plan]
    assert online["spend_7d"] == [float(latest.spend_7d)]

    import pandas as pd
    pd.DataFrame({"customer_id": [cid], "event_timestamp": [pd.Timestamp.now(tz="UTC")], "spend_7d": [1234.5],
                  "transactions_7d": [3], "tickets_7d": [0]}).to_csv(tmp_path / "events.csv", index=False)
    assert j(run_cli("features", "push", "customer_activity", tmp_path / "events.csv", "--json", check=0))["rows"] == 1
    online = j(run_cli("features", "online", "--feature", "customer_activity:spend_7d", "--entity", f"customer_id={cid}", "--json", check=0))
    assert online["spend_7d"] == [1234.5]
    assert j(run_cli("audit", "verify", "--json", check=0))["ok"]


def test_errors_are_clear_and_exit_nonzero(home, tmp_path):
    run_cli("init", check=0)
    (tmp_path / "bad.yaml").write_text("feature_views:\n  - {name: v, entities: [nobody], source: nothing, features: [x]}\n")
    p = run_cli("features", "apply", tmp_path / "bad.yaml", check=1)
    assert "error: 2 problem(s) in the feature definitions; nothing was applied" in p.stderr
    assert "unknown entity 'nobody'" in p.stderr and "no dataset 'nothing'" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("datasets", "register", "x", tmp_path / "missing.csv", "--classification", "internal", check=1)
    assert "no such data file" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("datasets", "register", "x", tmp_path / "bad.yaml", "--classification", "secret", check=1)
    assert "unknown data classification 'secret'" in p.stderr and "hint: use one of: public, internal, confidential, personal" in p.stderr
    p = run_cli("--user", "intruder", "datasets", "list", check=3)
    assert "'intruder' (roles: none) may not datasets:read" in p.stderr
    p = run_cli("features", "show", "nope", "--json", check=1)
    assert json.loads(p.stderr)["error"] == "NotFoundError"
    (home / "mlplat.toml").write_text("[feast]\nonline_store = 'cassandra'\n")
    p = run_cli("info", check=2)
    assert "feast.online_store must be 'sqlite' or 'redis'" in p.stderr


def test_config_show_hides_secrets(home):
    home.mkdir()
    (home / "mlplat.toml").write_text('[platform_db]\nurl = "postgresql+psycopg://app:s3cret@db:5432/mlplat"\n'
                                      '[mlflow]\ntracking_uri = "http://ml:pw2@mlflow:5000"\n'
                                      '[feast]\nredis_connection_string = "redis:6379,password=hunter2,ssl=true"\n')
    p = run_cli("config", "show", check=0)
    for secret in ("s3cret", "pw2", "hunter2"):
        assert secret not in p.stdout, secret
    shown = j(p)
    assert shown["platform_db"]["url"] == "postgresql+psycopg://app:***@db:5432/mlplat"
    assert shown["mlflow"]["tracking_uri"] == "http://ml:***@mlflow:5000"
    assert shown["feast"]["redis_connection_string"] == "redis:6379,password=***,ssl=true"
    assert j(run_cli("config", "show", "--json", check=0)) == shown


def test_cli_and_notebooks_get_the_same_refusals(home, tmp_path):
    "Authorization lives in the core calls the CLI makes, so the Python API refuses the same principal the same way."
    import mlplat
    import pytest
    from mlplat.errors import PermissionDenied
    from mlplat.serving.deployment import Deployment, render_for
    run_cli("init", check=0)
    spec = tmp_path / "dep.yaml"
    spec.write_text("name: churn-live\nvariants:\n- uri: missing.onnx\n")
    assert "'guest' (roles: none) may not serving:run" in run_cli("--user", "guest", "deployments", "render", spec, check=3).stderr
    assert "'guest' (roles: none) may not monitoring:read" in run_cli("--user", "guest", "dashboards", "serve", check=3).stderr
    guest = mlplat.connect(home, user="guest")
    with pytest.raises(PermissionDenied, match="may not serving:run"):
        render_for(guest, Deployment.from_yaml(spec))
    with pytest.raises(PermissionDenied, match="may not monitoring:read"):
        guest.dashboards.serve()
    denied = [r["action"] for r in mlplat.connect(home).audit.records(10) if r["outcome"] == "denied"]
    assert denied.count("serving:run") == 2 and denied.count("monitoring:read") == 2
