"""Feature-aware requests: the request carries entity keys, the server reads the online features from the feature store
and builds the model input in the trained order — the answer equals the model applied to those features directly."""
import httpx
import numpy as np
import pytest

from helpers import free_port
from mlplat.errors import ValidationError
from mlplat.models.onnx import flavor_requirements

pytestmark = pytest.mark.services   # a server on a port, in this process

FEATURES = ["monthly_fee", "age", "spend_7d", "transactions_7d", "tickets_7d"]


def test_entity_keys_instead_of_features(churn_ws, churn_set):
    import mlflow
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from mlplat.serving.deployment import Deployment
    ws = churn_ws
    ws.features.materialize()
    df = churn_set.to_df()
    X = df[FEATURES].fillna(0).to_numpy(np.float32)
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, df["churned"])
    mlflow.set_tracking_uri(ws.config.tracking_uri)
    exp = ws.mlflow_client().create_experiment("churn-raw", artifact_location=f"{ws.config.artifact_root}/churn-raw")
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.sklearn.log_model(pipe, name="model", input_example=X[:5], pip_requirements=flavor_requirements("sklearn"))
    v = ws.models.register(run.info.run_id, "churn-raw", sample=X[:64])
    ws.models.promote("churn-raw", v.version, "champion")
    spec = {"name": "churn-raw", "variants": [{"name": "champion", "uri": "models:/churn-raw@champion"}],
            "features": {"service": "churn_v1", "inputs": {"input": FEATURES}}}
    with pytest.raises(ValidationError, match="has no feature"):
        ws.serving.serve(deployments=[Deployment.from_dict({**spec, "features": {"service": "churn_v1", "inputs": {"input": ["nope"]}}})],
                         port=free_port(), background=True)
    srv = ws.serving.serve(deployments=[Deployment.from_dict(spec)], port=free_port(), background=True, refresh_seconds=0)
    client = httpx.Client(headers={"authorization": "Bearer " + ws.tokens.create("app", ["inference-client"])["token"]})
    try:
        ids = sorted(df["customer_id"].unique().tolist())[:25]
        r = client.post(f"{srv.url}/v2/models/churn-raw/infer",
                       json={"id": "f1", "parameters": {"entities": [{"customer_id": i} for i in ids]}})
        assert r.status_code == 200, r.text
        got = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in r.json()["outputs"]}
        online = ws.features.online([{"customer_id": i} for i in ids], service="churn_v1")
        direct = np.array([[0.0 if online[f][k] is None else online[f][k] for f in FEATURES] for k in range(len(ids))], np.float32)
        np.testing.assert_allclose(got["probabilities"], pipe.predict_proba(direct), atol=1e-5)
        bad = client.post(f"{srv.url}/v2/models/churn-raw/infer", json={"parameters": {"entities": [{"client": 1}]}})
        assert bad.status_code == 400 and "feature lookup failed" in bad.json()["error"]
        plain = client.post(f"{srv.url}/v2/models/churn-raw/infer", json={"inputs": [
            {"name": "input", "shape": [1, 5], "datatype": "FP32", "data": direct[0].tolist()}]})
        assert np.allclose(plain.json()["outputs"][1]["data"], got["probabilities"][0], atol=1e-6)  # features may still be sent
    finally:
        srv.stop()
