"""`mlplat demo` — the main job of `make demo` — end to end on a fresh embedded workspace, twice."""
import json

from conftest import run_cli


def test_demo_runs_and_is_idempotent(tmp_path, home):
    demo_home = tmp_path / "demo"
    rep = json.loads(run_cli("demo", "--home", demo_home, "--customers", "400", "--days", "60", "--json", check=0).stdout)
    assert [d["id"] for d in rep["datasets"]] == ["customers@1", "transactions@1"]
    assert rep["training_set"]["rows"] == rep["data"]["labels"] == 400 * 2
    assert rep["training_set"]["rows_without_recent_activity"] > 0
    assert rep["online"]["values"]["age"] is not None and rep["online"]["values"]["spend_7d"] is not None
    assert rep["push"]["spend_7d_after"] == round(rep["push"]["spend_7d_before"] + 250.0, 2)
    assert "may not be stored or processed in region 'eu-west-1'" in rep["residency_refusal"]
    assert rep["job"]["state"] == "succeeded" and rep["job"]["metrics"]["test_auc"] > 0.6
    assert rep["job"]["training_set"] == "churn@1" and rep["job"]["spec"]["deepspeed"]["zero_stage"] == 2
    assert rep["audit"]["ok"]
    assert (demo_home / "feast" / "registry.db").exists() and (demo_home / "demo" / "churn_features.yaml").exists()

    text = run_cli("demo", "--home", demo_home, "--customers", "400", "--days", "60", check=0).stdout
    assert "customers@1 (400 rows" in text and "churn@1" in text and "chain intact" in text
    assert "REFUSED, nothing written, audited" in text and "Where to look" in text
    assert "succeeded in" in text and "test AUC" in text
