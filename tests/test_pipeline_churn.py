"""The churn pipeline template end to end: features -> two DeepSpeed trainings side by side -> register (gates) ->
promote -> canary. It is the heaviest test (four training processes at once), so `make test` runs it alone, after the
parallel suite: in one CI run next to it, the other worker's Ray cluster lost its job agent and then stopped answering."""
import json
from datetime import datetime

from conftest import run_cli


def test_the_churn_pipeline_runs_end_to_end(ws):
    "templates/pipelines/churn: features -> 2 DeepSpeed trainings side by side -> register (gates) -> promote -> canary."
    from conftest import REPO
    r = run_cli("pipelines", "run", REPO / "templates/pipelines/churn/pipeline.yaml", "-p", "customers=300", "-p", "days=45",
                "-p", "epochs=2", "-p", "challenger_epochs=2", "--json", check=0)
    rec = json.loads(r.stdout)
    steps = {s["name"]: s for s in rec["steps"]}
    assert rec["status"] == "succeeded" and all(s["status"] == "succeeded" for s in steps.values()), steps
    assert steps["register_champion"]["outputs"]["gates"] == {"parity": True, "latency": True}
    assert ws.models.get("churn", "champion").version == steps["register_champion"]["outputs"]["version"]
    assert ws.models.get("churn", "challenger").version == steps["register_challenger"]["outputs"]["version"]
    assert sum(steps["deploy"]["outputs"]["variants"].values()) == 200
    # the two trainings overlapped
    a0, a1 = (datetime.fromisoformat(steps["train_champion"][k]) for k in ("started_at", "finished_at"))
    b0, b1 = (datetime.fromisoformat(steps["train_challenger"][k]) for k in ("started_at", "finished_at"))
    assert a0 < b1 and b0 < a1
