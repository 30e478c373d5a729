"""`mlplat serve` follows only governed moves: an alias moved in MLflow behind mlplat's back keeps the governed version
serving and is audited (and notified) once per move, a governed promotion is followed, an alias mlplat never moved is
not served; and a model file is bound to its name, version and digest: another version's sealed file, or an
unencrypted file once the `mlplat.sealed` tag is gone, never loads."""
import shutil
import time
from pathlib import Path

import httpx
import pytest

from helpers import X, configure, onnx_chain, register_version, run_cli

pytestmark = pytest.mark.services   # every test runs `mlplat serve`

BODY = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": X[:2].ravel().tolist()}]}


def refusals(ws) -> list[dict]:
    "The refused alias moves in the audit log, oldest first."
    return sorted((r for r in ws.audit.records(limit=None) if r["action"] == "serving.alias_refused"), key=lambda r: r["seq"])


def wait_for(check, what: str, timeout: float = 60):
    "Poll `check()` until it returns something truthy (the server polls aliases every 0.5 s)."
    end = time.time() + timeout
    while time.time() < end:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"never saw {what}")


def served_version(base: str) -> str:
    r = httpx.post(f"{base}/infer", json=BODY)
    assert r.status_code == 200, r.text
    return r.json()["model_version"]


def stored_file(ws, version: int) -> Path:
    "The `model.onnx` of a registered version in the artifact store (a local folder in the test workspace)."
    uri = ws.mlflow_client().get_model_version_download_uri("risk", str(version))
    return next(Path(uri.removeprefix("file://")).rglob("model.onnx"))


def test_an_alias_moved_behind_mlplats_back_keeps_serving_the_governed_version(ws, home, server, webhook):
    v1, v2 = register_version(ws, 1.0), register_version(ws, 0.001)
    ws.models.promote("risk", v1.version, "champion")
    hook, got = webhook
    configure(home, hook, ["serving.alias_refused"])
    base = f"http://{server('risk=models:/risk@champion')}/v2/models/risk"
    ws.mlflow_client().set_registered_model_alias("risk", "champion", str(v2.version))   # no gates, RBAC, audit
    [refused] = wait_for(lambda: refusals(ws), "the refused move audited")
    assert refused["outcome"] == "denied" and refused["resource"] == "model:risk@champion"
    assert refused["details"] == {"model": "risk", "alias": "champion", "ungoverned_version": v2.version,
                                  "served_version": v1.version}
    time.sleep(2)                                   # several more polls see the same move: it is not audited again
    assert len(refusals(ws)) == 1 and served_version(base) == str(v1.version)
    assert [e["event"] for e in wait_for(lambda: got, "the notification")] == ["serving.alias_refused"]
    assert got[0]["details"]["ungoverned_version"] == v2.version

    ws.models.promote("risk", v2.version, "champion", reason="governed")          # followed within the poll interval
    wait_for(lambda: served_version(base) == str(v2.version), "the promoted version served")
    assert len(refusals(ws)) == 1                   # the governed move raised no refusal on its way
    ws.mlflow_client().set_registered_model_alias("risk", "champion", str(v1.version))   # a new ungoverned move
    assert wait_for(lambda: len(refusals(ws)) == 2 and refusals(ws), "the second move audited")[-1]["details"][
        "ungoverned_version"] == v1.version
    assert served_version(base) == str(v2.version) and len(got) == 2


def test_a_server_starts_on_the_governed_version_and_never_on_an_unrecorded_alias(ws, server):
    v1, v2 = register_version(ws, 1.0), register_version(ws, 0.001)
    ws.mlflow_client().set_registered_model_alias("risk", "challenger", str(v1.version))
    p = run_cli("serve", "--model", "risk=models:/risk@challenger", "--port", "0", "--auth", "off", check=3)
    assert "alias history records no move of risk@challenger" in p.stderr and "mlplat models promote" in p.stderr
    assert "Traceback" not in p.stderr

    ws.models.promote("risk", v1.version, "champion")
    ws.mlflow_client().set_registered_model_alias("risk", "champion", str(v2.version))
    base = f"http://{server('risk=models:/risk@champion')}/v2/models/risk"
    assert httpx.get(base).json()["versions"] == [str(v1.version)] and served_version(base) == str(v1.version)
    [refused] = refusals(ws)                        # audited at start, not again by the polls after it
    assert refused["details"]["ungoverned_version"] == v2.version
    time.sleep(1.5)
    assert len(refusals(ws)) == 1


def test_a_swapped_sealed_file_and_a_removed_sealed_tag_are_refused(ws, server):
    v1, v2 = register_version(ws, 1.0), register_version(ws, 0.001)
    ws.models.promote("risk", v1.version, "champion")
    base = f"http://{server('risk=models:/risk@champion')}/v2/models/risk"
    shutil.copy(stored_file(ws, v1.version), stored_file(ws, v2.version))   # version 1's sealed file where 2 belongs
    ws.models.promote("risk", v2.version, "champion")
    err = wait_for(lambda: httpx.get(base).json().get("parameters", {}).get("last_load_error"), "the refused load")
    assert "was sealed as" in err and "a file was swapped" in err and "it was not loaded" in err
    assert httpx.get(base).json()["versions"] == [str(v1.version)] and served_version(base) == str(v1.version)
    assert any(r["action"] == "crypto.open" and r["outcome"] == "denied" for r in ws.audit.records(limit=None))

    # the version's MLflow tag says nothing any more, and its file is an unencrypted (attacker's) model
    client = ws.mlflow_client()
    client.delete_model_version_tag("risk", str(v2.version), "mlplat.sealed")
    assert not ws.models.get("risk", v2.version).sealed
    onnx_chain(stored_file(ws, v2.version))
    shutil.rmtree(ws.config.home / "serving-cache", ignore_errors=True)
    p = run_cli("serve", "--model", f"risk=models:/risk/{v2.version}", "--port", "0", "--auth", "off", check=4)
    assert "replaced by an unencrypted file" in p.stderr and "it was not loaded" in p.stderr and "Traceback" not in p.stderr
