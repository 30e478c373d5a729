"""The prediction log under a live `mlplat serve`, sealed at rest (the default): A/B reports read it while the server
appends (a half-written last frame is read next time, a torn one is skipped and counted, a line a crash cut off never
fails a report), outcomes
never land outside the workspace, the server applies the retention when it starts a day (audited), and a disk that
refuses the log (ENOSPC from /dev/full, EMFILE from a lowered RLIMIT_NOFILE) never stops the server: the lost lines
are counted on /metrics, audited and notified once, and writing resumes when the fault clears."""
import base64
import json
import os
import re
import resource
import threading
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import yaml

from helpers import (BIN, X, configure, free_port, logged_predictions as logged, onnx_chain, run_cli, start_process,
                     stop_process, wait_for, wait_http)
from mlplat.governance.crypto import LOG_MAGIC
from mlplat.serving.prediction_log import TORN_AFTER_SECONDS, outcomes_folder, predictions_folder, read_predictions


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


def frame_marker(path) -> bytes:
    "The sync marker every frame of a sealed log starts with (from its header)."
    data = path.read_bytes()
    n = len(LOG_MAGIC)
    return base64.b64decode(json.loads(data[n + 4:n + 4 + int.from_bytes(data[n:n + 4], "big")])["sync"])


@pytest.mark.services
def test_ab_report_reads_the_log_while_the_server_appends(ws, server, tmp_path):
    url = serve_shop(server, tmp_path)
    with httpx.Client() as c:
        send(c, url, [f"r{i}" for i in range(60)])
    assert len(logged(ws, "shop", 60)) == 60
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text("request_id,outcome\n" + "".join(f"r{i},{i % 2}\n" for i in range(60)))
    run_cli("ab", "outcomes", "shop", outcomes, check=0)

    # what a reader sees while the server, and `ab outcomes`, are in the middle of a write: the start of a frame
    [day_file] = predictions_folder(ws.config.home, "shop").glob("*.sealed")
    [outcome_file] = outcomes_folder(ws.config.home, "shop").glob("*.sealed")
    for f in (day_file, outcome_file):
        with open(f, "ab") as out:
            out.write(frame_marker(f) + (400).to_bytes(4, "big") + b"\0" * 30)
    rep = ws.serving.ab_report("shop")
    assert (rep["requests"], rep["with_outcome"], "skipped_lines" in rep) == (60, 60, False)
    assert json.loads(run_cli("ab", "report", "shop", "--json", check=0).stdout)["requests"] == 60

    # the server goes on appending after the torn frame (as after a crash): the frame is skipped and counted, and
    # every frame after it is read
    with httpx.Client() as c:
        send(c, url, [f"s{i}" for i in range(10)])
    logged(ws, "shop", 70)
    rep = ws.serving.ab_report("shop")
    assert (rep["requests"], rep["skipped_lines"]) == (70, 1)

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


def test_a_line_cut_off_by_a_crash_never_fails_a_report(ws, tmp_path):
    day = datetime.now(timezone.utc) - timedelta(days=1)
    folder = predictions_folder(ws.config.home, "shop")
    folder.mkdir(parents=True)
    recs = [{"ts": (day + timedelta(seconds=i)).isoformat(), "request_id": f"r{i}", "model": "shop", "version": "1",
             "variant": "ab"[i % 2], "inputs": {}, "outputs": {}} for i in range(6)]
    day_file = folder / f"{day:%Y-%m-%d}.jsonl"
    day_file.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"ts": "' + day.isoformat()[:12])   # the crash
    old = time.time() - TORN_AFTER_SECONDS - 5       # nobody has appended since: it is not a line being written
    os.utime(day_file, (old, old))
    rows = tmp_path / "outcomes.csv"
    rows.write_text("request_id,outcome\n" + "".join(f"r{i},{i % 2}\n" for i in range(6)))
    run_cli("ab", "outcomes", "shop", rows, check=0)
    rep = ws.serving.ab_report("shop")
    assert (rep["requests"], rep["with_outcome"], rep["skipped_lines"]) == (6, 6, 1)
    out = json.loads(run_cli("ab", "report", "shop", "--json", check=0).stdout)
    assert (out["requests"], out["skipped_lines"]) == (6, 1)


def metric(client, base, name, **labels) -> float:
    "One sample of the server's /metrics (0 when absent)."
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in client.get(f"{base}/metrics").text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def lowest_free_fd(pid) -> int:
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return min(set(range(max(used) + 2)) - used)


@pytest.mark.services
def test_server_keeps_serving_when_its_log_cannot_be_written(ws, home, tmp_path, webhook):
    hook, got = webhook
    configure(home, hook, ["serving.prediction_log_failed"])
    model, port = onnx_chain(tmp_path / "m.onnx"), free_port()
    today = f"{datetime.now(timezone.utc):%Y-%m-%d}"
    full = predictions_folder(ws.config.home, "m") / f"{today}.sealed"
    full.parent.mkdir(parents=True)
    full.symlink_to("/dev/full")                                   # every write to it: ENOSPC, from the kernel
    log = tmp_path / "serve.log"
    proc = start_process([BIN / "mlplat", "serve", "--port", port, "--refresh", "0", "--auth", "off",
                          "--model", f"m={model}", "--model", f"n={model}"], log)
    base = f"http://127.0.0.1:{port}"
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    failed = lambda: sorted((r for r in ws.audit.records(limit=None) if r["action"] == "serving.prediction_log_failed"),
                            key=lambda r: r["seq"])
    try:
        wait_http(f"{base}/v2/health/ready", proc, log)
        with httpx.Client(timeout=30) as c:                         # one keep-alive connection for the whole test
            for _ in range(30):
                assert c.post(f"{base}/v2/models/m/infer", json=body).status_code == 200
            wait_for(lambda: metric(c, base, "mlplat_prediction_log_dropped_total", reason="disk_full") == 30, 30, "30 lost lines")
            wait_for(lambda: got, 30, "the notification")
            assert len(failed()) == 1 and failed()[0]["outcome"] == "failure" and failed()[0]["resource"] == "predictions:m"
            assert "No space left on device" in failed()[0]["details"]["error"]

            full.unlink()                                           # the disk has room again
            for _ in range(5):
                assert c.post(f"{base}/v2/models/m/infer", json=body).status_code == 200
            wait_for(lambda: len(read_predictions(ws.config.home, "m", keys=ws.crypto)) == 5, 30, "writing to resume")

            # too many open files: no descriptor below the limit is free, so opening n's day file fails (EMFILE)
            soft, hard = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
            resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (lowest_free_fd(proc.pid), hard))
            try:
                for _ in range(5):
                    assert c.post(f"{base}/v2/models/n/infer", json=body).status_code == 200
                wait_for(lambda: metric(c, base, "mlplat_prediction_log_dropped_total", reason="too_many_open_files") == 5,
                         30, "5 lines lost to EMFILE")
            finally:
                resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
            for _ in range(3):
                assert c.post(f"{base}/v2/models/n/infer", json=body).status_code == 200
            wait_for(lambda: len(read_predictions(ws.config.home, "n", keys=ws.crypto)) == 3, 30, "n's lines once the limit is back")
            assert metric(c, base, "mlplat_prediction_log_written_total") == 8
        assert len(failed()) == 1 and len(got) == 1                 # one alert per interval, however many failures
        assert got[0]["event"] == "serving.prediction_log_failed" and "lost" in got[0]["subject"]
    finally:
        stop_process(proc)
    lost = [r["details"]["lost_lines"] for r in failed()]           # at shutdown: what the interval held back
    assert sum(sum(x.values()) for x in lost) == 35 and lost[-1].get("too_many_open_files") == 5, lost
    assert "Traceback" not in log.read_text()
