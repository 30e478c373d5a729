"""The prediction log under a live `mlplat serve`: A/B reports read it while the server appends (a half-written last
line is read next time, a damaged one is skipped and counted), outcomes never land outside the workspace, and the
server applies the retention when it starts a day (audited)."""
import json
import threading
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import yaml

from helpers import X, onnx_chain, run_cli
from mlplat.serving.prediction_log import outcomes_folder, predictions_folder, read_predictions


def serve_shop(server, tmp_path):
    "A two-variant deployment `shop` of a small ONNX model; returns its infer URL."
    model = onnx_chain(tmp_path / "m.onnx")
    spec = tmp_path / "shop.yaml"
    spec.write_text(yaml.safe_dump({"name": "shop", "variants": [{"name": "a", "uri": str(model), "weight": 50},
                                                                 {"name": "b", "uri": str(model), "weight": 50}]}))
    return f"http://{server(f'--config={spec}')}/v2/models/shop/infer"


def send(client, url, ids):
    for rid in ids:
        r = client.post(url, json={"id": rid, "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                                          "data": X[len(rid) % 300].tolist()}]})
        assert r.status_code == 200, r.text


def logged(ws, name, n):
    "Wait until the server's writer has written `n` records of `name` (it writes every 20 ms, off the response path)."
    end = time.time() + 30
    while len(recs := read_predictions(ws.config.home, name)) < n and time.time() < end:
        time.sleep(0.05)
    return recs


@pytest.mark.services
def test_ab_report_reads_the_log_while_the_server_appends(ws, server, tmp_path):
    url = serve_shop(server, tmp_path)
    with httpx.Client() as c:
        send(c, url, [f"r{i}" for i in range(60)])
    assert len(logged(ws, "shop", 60)) == 60
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text("request_id,outcome\n" + "".join(f"r{i},{i % 2}\n" for i in range(60)))
    run_cli("ab", "outcomes", "shop", outcomes, check=0)

    # what a reader sees while the server, and `ab outcomes`, are in the middle of a write
    [day_file] = predictions_folder(ws.config.home, "shop").glob("*.jsonl")
    with open(day_file, "a") as f:
        f.write('{"ts": "2026-12-02T10:00:00.000001+00:00", "request_id": "r6')
    [outcome_file] = outcomes_folder(ws.config.home, "shop").glob("*.jsonl")
    with open(outcome_file, "a") as f:
        f.write('{"request_id": "r1", "outc')
    rep = ws.serving.ab_report("shop")
    assert (rep["requests"], rep["with_outcome"], "skipped_lines" in rep) == (60, 60, False)
    assert json.loads(run_cli("ab", "report", "shop", "--json", check=0).stdout)["requests"] == 60

    # the server goes on appending after the torn line (as after a crash): the damage is skipped and counted
    with httpx.Client() as c:
        send(c, url, [f"s{i}" for i in range(10)])
    logged(ws, "shop", 69)
    rep = ws.serving.ab_report("shop")
    assert (rep["requests"], rep["skipped_lines"]) == (69, 1)  # the torn line swallowed the first one written after it

    # reports during live traffic never fail on a line the server is writing
    stop, failures = threading.Event(), []

    def load():
        with httpx.Client() as c:
            i = 0
            while not stop.is_set():
                send(c, url, [f"live{i}"]); i += 1
    t = threading.Thread(target=load)
    t.start()
    try:
        counts = []
        for _ in range(15):
            try:
                counts.append(ws.serving.ab_report("shop")["requests"])
            except Exception as e:  # noqa: BLE001 - any failure is the bug
                failures.append(repr(e))
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(30)
    assert failures == [] and counts == sorted(counts) and counts[0] >= 69


def test_outcomes_for_a_name_that_climbs_out_are_refused(ws, home, tmp_path):
    rows = tmp_path / "outcomes.csv"
    rows.write_text("request_id,outcome\nr1,1\n")
    for name in ("../../x", "../x", "a/b", ".."):
        r = run_cli("ab", "outcomes", name, rows, check=1)
        assert "is not a valid deployment name" in r.stderr and "Traceback" not in r.stderr, r.stderr
    from mlplat.errors import ValidationError
    with pytest.raises(ValidationError, match="is not a valid deployment name"):
        ws.serving.log_outcomes("../../x", [{"request_id": "r1", "outcome": 1}])
    assert not (tmp_path / "x").exists() and not (home / "x").exists() and not (home / "outcomes").exists()


@pytest.mark.services
def test_server_applies_the_retention_and_refuses_a_name_that_climbs_out(ws, server, tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="is not a valid served name"):
        server(f"..={onnx_chain(tmp_path / 'm.onnx')}")
    today = datetime.now(timezone.utc).date()  # the log's days are UTC days
    old = (today - timedelta(days=30)).isoformat()
    for folder in (predictions_folder(ws.config.home, "shop"), outcomes_folder(ws.config.home, "shop")):
        folder.mkdir(parents=True)
        (folder / f"{old}.jsonl").write_text("")
    monkeypatch.setenv("MLPLAT_SERVING_PREDICTION_RETENTION_DAYS", "7")
    url = serve_shop(server, tmp_path)
    with httpx.Client() as c:
        send(c, url, ["r1"])
    assert len(logged(ws, "shop", 1)) == 1
    end = time.time() + 30  # the writer prunes after it opens the day's file: wait for its audit record
    while not (pruned := [r for r in ws.governance.audit.records() if r["action"] == "predictions.prune"]) and time.time() < end:
        time.sleep(0.05)
    assert not (predictions_folder(ws.config.home, "shop") / f"{old}.jsonl").exists()
    assert not (outcomes_folder(ws.config.home, "shop") / f"{old}.jsonl").exists()
    assert pruned[0]["details"]["removed"] == {"shop": {"predictions": [old], "outcomes": [old]}}

    # on demand, from the CLI: nothing left past 7 days; a day file past 1 day goes
    assert json.loads(run_cli("monitor", "prune", "--json", check=0).stdout) == {"keep_days": 7, "removed": {}}
    older = (today - timedelta(days=2)).isoformat()
    (outcomes_folder(ws.config.home, "shop") / f"{older}.jsonl").write_text("")
    out = json.loads(run_cli("monitor", "prune", "shop", "--keep-days", "1", "--json", check=0).stdout)
    assert out["removed"] == {"shop": {"outcomes": [older]}}
