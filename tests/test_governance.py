"""Governance acceptance: residency refusals, RBAC deny-by-default, and the tamper-evident audit chain via the CLI."""
import json
import sqlite3

import pandas as pd
import pytest

from helpers import run_cli
from mlplat.errors import PermissionDenied, ResidencyViolation


def _files(home):
    return sorted(str(p.relative_to(home)) for p in (home / "data").rglob("*"))


def test_personal_data_in_disallowed_region_is_refused_nothing_written_audited(ws, home, churn):
    before_files, before_audit = _files(home), len(ws.audit.records(limit=None))
    with pytest.raises(ResidencyViolation, match="eu-west-1.*allowed: ae-\\*"):
        ws.features.register_source("customers", churn.customers, classification="personal", region="eu-west-1")
    assert _files(home) == before_files
    assert ws.features.datasets.list() == []
    recs = ws.audit.records(limit=None)
    assert len(recs) == before_audit + 1
    assert (recs[0]["action"], recs[0]["outcome"], recs[0]["details"]["classification"]) == ("datasets.register", "denied", "personal")
    # the same data classified public is not confined
    assert ws.features.register_source("customers", churn.customers, classification="public", region="eu-west-1").id == "customers@1"


def test_workspace_region_outside_policy_refuses_storing_personal_data(home, churn, monkeypatch):
    import mlplat
    monkeypatch.setenv("MLPLAT_REGION", "us-east-1")
    ws = mlplat.connect(home)
    with pytest.raises(ResidencyViolation, match="'us-east-1'"):
        ws.features.register_source("customers", churn.customers, classification="personal")
    assert not (home / "data" / "datasets").exists() or _files(home) == []


def test_viewer_cannot_apply_and_registry_is_untouched(churn_ws, home):
    toml = home / "mlplat.toml"
    toml.write_text(toml.read_text().replace("[rbac.bindings]", '[rbac.bindings]\n"vera" = ["viewer"]\n"dana" = ["data-scientist"]'))
    import mlplat
    vera = mlplat.connect(home, user="vera")
    before = [fv.name for fv in churn_ws.features.store.list_feature_views()]
    new_view = {"feature_views": [{"name": "extra", "entities": ["customer"], "source": "customers", "features": [{"name": "age", "dtype": "int64"}]}]}
    with pytest.raises(PermissionDenied, match="'vera' \\(roles: viewer\\) may not features:apply"):
        vera.features.apply(new_view)
    assert [fv.name for fv in churn_ws.features.store.list_feature_views()] == before
    assert [v["name"] for v in vera.features.list()] == ["customer_activity", "customer_profile"]  # reading is allowed
    assert churn_ws.audit.records(limit=1)[0]["outcome"] == "denied"
    # a data scientist may apply, but not materialize (ml-engineer and admin may)
    dana = mlplat.connect(home, user="dana")
    assert dana.features.apply(new_view).created == ["feature_view:extra@1"]
    with pytest.raises(PermissionDenied, match="ml-engineer"):
        dana.features.materialize()
    # an unknown principal gets nothing at all
    with pytest.raises(PermissionDenied, match="roles: none"):
        mlplat.connect(home, user="mallory").features.list()


def test_custom_roles_from_toml(home):
    home.mkdir()
    (home / "mlplat.toml").write_text('[rbac.roles]\nreader = ["features:read"]\n[rbac.bindings]\nrita = ["reader"]\n')
    import mlplat
    rita = mlplat.connect(home, user="rita")
    assert rita.features.list() == []
    with pytest.raises(PermissionDenied):
        rita.features.register_source("x", pd.DataFrame({"a": [1]}), classification="public")


def test_audit_verify_detects_edit_delete_and_reorder_via_cli(ws, home, churn):
    ws.features.register_source("customers", churn.customers, classification="personal", timestamp_field="event_timestamp")
    ws.features.register_source("transactions", churn.transactions, classification="personal", timestamp_field="event_timestamp")
    with pytest.raises(ResidencyViolation):
        ws.features.register_source("eu", churn.customers, classification="personal", region="eu-west-1")
    ws.audit.export()
    ok = run_cli("audit", "verify", "--json", check=0)
    rep = json.loads(ok.stdout)
    assert rep["ok"] and rep["records"] == 4
    db = home / "platform.db"

    con = sqlite3.connect(db)
    con.execute("UPDATE audit_log SET principal = 'someone-else' WHERE seq = 2"); con.commit()
    bad = run_cli("audit", "verify", check=4)
    assert "FAILED" in bad.stdout and "record 2" in bad.stdout and "edited" in bad.stdout and "Traceback" not in bad.stderr
    con.execute(f"UPDATE audit_log SET principal = '{ws.principal.name}' WHERE seq = 2"); con.commit()
    run_cli("audit", "verify", check=0)

    rows = con.execute("SELECT seq, ts, principal, action, resource, region, outcome, details_json, prev_hash, hash FROM audit_log WHERE seq IN (2, 3) ORDER BY seq").fetchall()
    con.execute("DELETE FROM audit_log WHERE seq IN (2, 3)")  # swap records 2 and 3
    con.execute("INSERT INTO audit_log VALUES (?,?,?,?,?,?,?,?,?,?)", (2, *rows[1][1:]))
    con.execute("INSERT INTO audit_log VALUES (?,?,?,?,?,?,?,?,?,?)", (3, *rows[0][1:])); con.commit()
    bad = json.loads(run_cli("audit", "verify", "--json", check=4).stdout)
    assert not bad["ok"] and bad["bad_seq"] == 2

    con.execute("DELETE FROM audit_log WHERE seq IN (2, 3)")
    con.execute("INSERT INTO audit_log VALUES (?,?,?,?,?,?,?,?,?,?)", rows[0])
    con.execute("INSERT INTO audit_log VALUES (?,?,?,?,?,?,?,?,?,?)", rows[1]); con.commit()
    head = json.loads(run_cli("audit", "verify", "--json", check=0).stdout)["head"]
    con.execute("DELETE FROM audit_log WHERE seq = 3"); con.commit()
    bad = run_cli("audit", "verify", check=4)
    assert "record 3 is missing" in bad.stdout
    con.close()

    exported = run_cli("audit", "export", "--format", "csv", check=0).stdout
    assert exported.splitlines()[0].startswith("seq,ts,principal,action")
    assert run_cli("audit", "verify", "--expect-head", head, check=4).returncode == 4


def test_concurrent_writers_keep_the_chain(home):
    "Several processes appending at once: every record lands, the chain verifies."
    import multiprocessing as mp
    import mlplat
    mlplat.connect(home)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(home), i)) for i in range(4)]
    for p in procs: p.start()
    for p in procs: p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    ws = mlplat.connect(home)
    rep = ws.audit.verify()
    assert rep.ok and rep.records == 4 * 25, rep


def _append_many(home, i):
    from mlplat.workspace import connect
    ws = connect(home)
    for k in range(25):
        ws.governance.audit.append(ws.principal.name, "test.append", f"r{i}-{k}", "success", "ae-dubai-1")


def test_audit_export_failure_is_audited_as_failed(ws, tmp_path):
    from mlplat.errors import ValidationError
    with pytest.raises(ValidationError, match="cannot write the audit export"):
        ws.audit.export("csv", tmp_path / "missing-dir" / "audit.csv")
    assert ws.audit.records(limit=1)[0]["outcome"] == "failed"
    ws.audit.export("jsonl", tmp_path / "audit.jsonl")
    assert ws.audit.records(limit=1)[0]["outcome"] == "success" and (tmp_path / "audit.jsonl").exists()


def test_acting_user_cannot_be_chosen_with_a_verifying_provider(ws):
    from mlplat.errors import ConfigError
    ws.config.identity.provider = "mlplat.governance.identity:LocalIdentityProvider"
    with pytest.raises(ConfigError, match="only possible with the local identity provider"):
        ws.as_user("admin")


def test_sql_source_secrets_never_stored(ws, tmp_path):
    import sqlite3
    con = sqlite3.connect(tmp_path / "src.db"); con.execute("CREATE TABLE t (a INTEGER)"); con.execute("INSERT INTO t VALUES (1)"); con.commit(); con.close()
    v = ws.features.register_source("t", sql="SELECT * FROM t", url=f"sqlite:///{tmp_path}/src.db?password=hunter2", classification="internal")
    with pytest.raises(Exception):
        ws.features.register_source("u", sql="SELECT * FROM nope", url=f"sqlite:///{tmp_path}/src.db?token=hunter2", classification="internal")
    everything = json.dumps([v.to_dict(), ws.audit.records(limit=None), ws.lineage.of(v.node)], default=str)
    assert "hunter2" not in everything
