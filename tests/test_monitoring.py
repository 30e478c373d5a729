"""Monitoring against a real server: traffic drawn from the training distribution raises no alert; the same traffic with
one feature shifted raises a drift alert on that feature (audited); outcomes give AUC and accuracy."""
import json
from datetime import datetime, timezone

import httpx
import numpy as np
import pandas as pd
import pytest

from helpers import configure, X, Y, register_version, run_cli

pytestmark = pytest.mark.services   # every test runs `mlplat serve`


def send(url, rows, prefix):
    with httpx.Client() as c:
        for i, row in enumerate(rows):
            r = c.post(f"http://{url}/v2/models/risk/infer",
                       json={"id": f"{prefix}-{i}", "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                                                "data": row.tolist()}]})
            assert r.status_code == 200, r.text


@pytest.mark.slow
def test_drift_is_alerted_only_for_shifted_traffic(ws, home, server, webhook):
    import time
    v = register_version(ws, 1.0)
    ws.models.promote("risk", v.version, "champion")
    url = server("risk=models:/risk@champion")
    rng = np.random.default_rng(11)
    t0 = datetime.now(timezone.utc).isoformat()
    calm = rng.normal(size=(300, 4)).astype(np.float32)        # the training distribution (X is N(0, 1))
    send(url, calm, "calm")
    time.sleep(0.5)  # the prediction log is written every 20 ms
    t1 = datetime.now(timezone.utc).isoformat()
    shifted = calm.copy()
    shifted[:, 2] += 1.5                                        # feature 2 moves by 1.5 standard deviations
    send(url, shifted, "shifted")
    time.sleep(0.5)
    t2 = datetime.now(timezone.utc).isoformat()

    hook, got = webhook
    configure(home, hook, ["monitoring.alert"])
    quiet = json.loads(run_cli("monitor", "report", "risk", "--since", t0, "--until", t1, "--json", check=0).stdout)
    assert quiet["predictions"] == 300 and quiet["alerts"] == [], quiet["alerts"]
    [version] = quiet["versions"]
    assert version["judged"] and [f["feature"] for f in version["features"]] == [f"input[{j}]" for j in range(4)]
    assert all(not f["drifted"] for f in version["features"]), version["features"]

    loud = json.loads(run_cli("monitor", "report", "risk", "--since", t1, "--json", check=0).stdout)
    drifted = {a["feature"] for a in loud["alerts"] if a["kind"] == "drift"}
    assert "input[2]" in drifted and not drifted & {"input[0]", "input[1]", "input[3]"}, loud["alerts"]
    feature2 = next(f for f in loud["versions"][0]["features"] if f["feature"] == "input[2]")
    assert feature2["psi"] > 0.25 and feature2["p_value"] < 1e-6 and feature2["current_mean"] > 1.0
    audited = [e for e in ws.governance.audit.records() if e["action"] == "monitor.alert"]
    assert any(e["details"]["feature"] == "input[2]" and e["resource"] == f"model:risk/{v.version}" for e in audited)
    assert [e["event"] for e in got] == ["monitoring.alert"]        # one notification for the report, none for the calm one
    assert any("input[2]" in line for line in got[0]["details"]["alerts"]) and got[0]["details"]["served_as"] == "risk"
    r = run_cli("monitor", "report", "risk", "--since", t1, "--fail-on-alert", "--no-alerts", check=1)
    assert "input[2]" in r.stdout and "DRIFT" in r.stdout and len(got) == 1   # --no-alerts: neither audited nor notified

    # outcomes arrive: AUC and accuracy of the calm window (Y's rule: feature 0 > feature 2)
    truth = (calm[:, 0] - calm[:, 2] > 0).astype(int)
    outcomes = pd.DataFrame({"request_id": [f"calm-{i}" for i in range(300)], "outcome": truth})
    ws.serving.log_outcomes("risk", outcomes)
    acc = ws.monitoring.report("risk", since=t0, until=t1, alert=False)["versions"][0]["accuracy"]
    assert acc["labelled"] == 300 and acc["auc"] > 0.9 and acc["accuracy"] > 0.8, acc
    # on the shifted traffic the model is wrong more often: an accuracy bound it misses is an alert too, and notified
    ws.serving.log_outcomes("risk", pd.DataFrame({"request_id": [f"shifted-{i}" for i in range(300)], "outcome": truth}))
    cfg = home / "mlplat.toml"
    cfg.write_text(cfg.read_text().replace("min_accuracy = {}", "min_accuracy = {accuracy = 0.95}", 1))
    rep = json.loads(run_cli("monitor", "report", "risk", "--since", t1, "--json", check=0).stdout)
    [low] = [a for a in rep["alerts"] if a["kind"] == "accuracy"]
    assert low["metric"] == "accuracy" and low["value"] < 0.95, rep["alerts"]
    assert len(got) == 2 and any("accuracy" in line and "below 0.95" in line for line in got[1]["details"]["alerts"]), got[1]
    assert json.loads(run_cli("monitor", "report", "risk", "--since", t0, "--until", t1, "--json", check=0).stdout)["alerts"] == []
    # over time: the calm bucket, then the shifted one, with drift and accuracy each (what the dashboard plots)
    T0, T1, T2 = (datetime.fromisoformat(t) for t in (t0, t1, t2))
    span = max(T1 - T0, T2 - T1)                                # buckets [T1 - span, T1) and [T1, T1 + span)
    rows = json.loads(run_cli("monitor", "timeline", "risk", "--since", (T1 - span).isoformat(), "--until", t2,
                              "--every", f"{span.total_seconds():.6f}s", "--json", check=0).stdout)
    calm_row, shifted_row = rows
    assert calm_row["predictions"] == shifted_row["predictions"] == 300 and calm_row["drifted"] == []
    assert "input[2]" in shifted_row["drifted"] and calm_row["accuracy"] > shifted_row["accuracy"] and calm_row["auc"] > 0.9
    assert "every" in run_cli("monitor", "timeline", "risk", "--every", "0s", check=1).stderr


def test_too_few_predictions_are_not_judged_and_unknown_names_are_clear(ws, server):
    v = register_version(ws, 1.0)
    ws.models.promote("risk", v.version, "champion")
    url = server("risk=models:/risk@champion")
    send(url, X[:10], "few")
    import time
    time.sleep(0.5)
    rep = ws.monitoring.report("risk")
    assert rep["alerts"] == [] and rep["versions"][0]["judged"] is False and "at least 50" in rep["versions"][0]["note"]
    r = run_cli("monitor", "report", "nothing-served", check=1)
    assert "no prediction log for 'nothing-served'" in r.stderr
    r = run_cli("monitor", "report", "risk", "--window", "yesterday", check=1)
    assert "must be a number and a unit" in r.stderr
    assert Y.shape == (300,)
