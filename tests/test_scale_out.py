"""Scale-out is configuration only: a Redis online store, a PostgreSQL platform DB, an MLflow tracking server."""
import os
import subprocess
import time
import urllib.request

import pytest

from helpers import BIN, free_port, stop_process

pytestmark = pytest.mark.services   # Redis, PostgreSQL, an MLflow tracking server


def test_redis_online_store(home, churn, redis_url, monkeypatch):
    import redis
    import mlplat
    from mlplat.demo import churn_definitions
    monkeypatch.setenv("MLPLAT_FEAST_ONLINE_STORE", "redis")
    monkeypatch.setenv("MLPLAT_FEAST_REDIS_CONNECTION_STRING", redis_url)
    ws = mlplat.connect(home)
    assert "type: redis" in (home / "feast" / "feature_store.yaml").read_text()
    ws.features.register_source("customers", churn.customers, classification="personal", timestamp_field="event_timestamp")
    ws.features.register_source("transactions", churn.transactions, classification="personal", timestamp_field="event_timestamp")
    ws.features.apply(churn_definitions())
    ws.features.materialize(["customer_profile"])
    host, port = redis_url.split(":")
    assert redis.Redis(host=host, port=int(port)).dbsize() > 0
    got = ws.features.online([{"customer_id": 3}], features=["customer_profile:age"])
    assert got["age"] == [int(churn.customers.set_index("customer_id").loc[3, "age"])]


def test_postgres_platform_db(home, churn, postgres_url, monkeypatch):
    import sqlalchemy as sa
    import mlplat
    from mlplat.errors import ResidencyViolation
    monkeypatch.setenv("MLPLAT_DB_URL", postgres_url)
    ws = mlplat.connect(home)
    assert not (home / "platform.db").exists()
    v = ws.features.register_source("customers", churn.customers, classification="personal", timestamp_field="event_timestamp")
    assert v.id == "customers@1"
    with pytest.raises(ResidencyViolation):
        ws.features.register_source("customers", churn.customers, classification="personal", region="us-east-1")
    assert ws.audit.verify().ok and ws.audit.verify().records == 2
    with sa.create_engine(postgres_url).begin() as c:
        assert c.execute(sa.text("SELECT count(*) FROM datasets")).scalar() == 1
        c.execute(sa.text("UPDATE audit_log SET outcome = 'success' WHERE seq = 2"))
    rep = ws.audit.verify()
    assert not rep.ok and rep.bad_seq == 2


def test_mlflow_tracking_server(home, tmp_path, monkeypatch):
    import mlplat
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--default-artifact-root", str(tmp_path / "art")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/health", timeout=1); break
            except OSError:
                time.sleep(0.5)
        monkeypatch.setenv("MLPLAT_MLFLOW_TRACKING_URI", url)
        ws = mlplat.connect(home)
        assert ws.info()["mlflow_tracking_uri"] == url
        client = ws.mlflow_client()
        exp = client.get_experiment_by_name(ws.config.workspace.project)
        assert exp is not None
        from mlflow.tracking import MlflowClient
        assert MlflowClient(url).get_experiment_by_name(ws.config.workspace.project).experiment_id == exp.experiment_id
        assert not (home / "mlflow.db").exists()
    finally:
        stop_process(proc, timeout=30)
