"""Audit that a DB admin cannot rewrite unseen: a change and its success record commit or vanish together (SQLite and
PostgreSQL), concurrent operations keep the chain, and signed checkpoints expose truncations and wholesale rewrites."""
import json
import multiprocessing as mp
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from helpers import run_cli
from mlplat.db import table
from mlplat.errors import PermissionDenied


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def db_ws(request, home, monkeypatch):
    "A workspace whose platform DB is SQLite, or a fresh database on the test PostgreSQL (dropped afterwards)."
    import mlplat
    if request.param == "sqlite":
        yield mlplat.connect(home)
        return
    server = request.getfixturevalue("postgres_url").rsplit("/", 1)[0]
    name = "audit_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c: c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    monkeypatch.setenv("MLPLAT_DB_URL", f"{server}/{name}")
    ws = mlplat.connect(home)
    yield ws
    ws.engine.dispose()
    with admin.connect() as c: c.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.dispose()


def _tokens(ws) -> list[str]:
    with ws.engine.connect() as c: return sorted(r.name for r in c.execute(sa.select(table("api_tokens"))))


def _records(ws, action: str) -> list[tuple]:
    return [(r["resource"], r["outcome"]) for r in ws.audit.records(None, newest_first=False) if r["action"] == action]


def _edges(ws) -> set:
    with ws.engine.connect() as c: return {(r.src, r.dst) for r in c.execute(sa.select(table("lineage")))}


# ---- one transaction: the change and its success record -----------------------------------------------------------
def test_change_and_success_record_commit_or_vanish_together(db_ws):
    ws = db_ws
    t = ws.tokens.create("ci", ["viewer"])
    assert _tokens(ws) == ["ci"] and _records(ws, "tokens.create") == [(f"token:{t['id']}", "success")]

    def fail(conn): raise RuntimeError("the database went away at commit")
    sa.event.listen(ws.engine, "commit", fail, once=True)   # between the body and the commit
    with pytest.raises(RuntimeError, match="went away at commit"):
        ws.tokens.create("ci2", ["viewer"])
    assert _tokens(ws) == ["ci"]                                           # no token...
    assert [o for _, o in _records(ws, "tokens.create")] == ["success", "failed"]  # ...no success record; the failure
    assert ws.audit.verify().ok


def test_a_crash_before_the_commit_leaves_neither_change_nor_record(db_ws):
    ws = db_ws
    crash = ("import os, sqlalchemy as sa, mlplat\n"
             "ws = mlplat.connect()\n"
             "sa.event.listen(ws.engine, 'commit', lambda conn: os._exit(9), once=True)\n"
             "ws.tokens.create('crash', ['viewer'])\n")
    assert subprocess.run([sys.executable, "-c", crash], env=os.environ, timeout=300).returncode == 9
    assert _tokens(ws) == [] and _records(ws, "tokens.create") == []
    ws.tokens.create("after", ["viewer"])                                  # the database is not left locked
    assert _tokens(ws) == ["after"] and ws.audit.verify().ok


def test_a_denial_inside_an_operation_outlives_its_rollback(db_ws):
    ws, vera = db_ws, db_ws.as_user("vera")                                # vera holds no role
    with pytest.raises(PermissionDenied):
        with ws.governance.operation("test.link", "node:b", "datasets:register"):
            ws.lineage.add("node:a", "node:b")
            vera.governance.authorize("models:promote", "model:m/1")
    assert ("node:a", "node:b") not in _edges(ws)
    last = [(r["principal"], r["outcome"]) for r in ws.audit.records(2)][::-1]
    assert last == [("vera", "denied"), (ws.principal.name, "failed")] and ws.audit.verify().ok


def test_an_operation_inside_another_joins_it(db_ws):
    ws = db_ws
    with ws.governance.operation("test.outer", "node:o", "datasets:register"):
        ws.lineage.add("outer", "kept")
        with pytest.raises(ValueError):
            with ws.governance.operation("test.inner", "node:i", "datasets:register"):
                ws.lineage.add("inner", "undone")
                raise ValueError("the inner operation fails")
        with ws.governance.operation("test.inner", "node:j", "datasets:register"):
            ws.lineage.add("inner", "kept")
    assert _edges(ws) == {("outer", "kept"), ("inner", "kept")}
    outcomes = [(r["resource"], r["outcome"]) for r in ws.audit.records(None, newest_first=False)]
    assert outcomes == [("node:o", "success"), ("node:j", "success"), ("node:i", "failed")]  # the failure once the outer ended
    assert ws.audit.verify().ok


def test_a_thread_started_in_an_operation_writes_on_its_own(db_ws):
    ws = db_ws
    th = threading.Thread(target=lambda: ws.lineage.add("thread", "edge"))
    with pytest.raises(ValueError):
        with ws.governance.operation("test.op", "node:y", "datasets:register"):
            ws.lineage.add("operation", "edge")
            th.start()                       # on SQLite its write waits for the operation's transaction to end
            raise ValueError("the operation fails")
    th.join()
    assert _edges(ws) == {("thread", "edge")}


# ---- concurrent operations serialize the chain ----------------------------------------------------------------------
def _create_tokens(home: str, db_url: str | None, i: int, n: int):
    os.environ["MLPLAT_HOME"] = home
    if db_url: os.environ["MLPLAT_DB_URL"] = db_url
    from mlplat.workspace import connect
    ws = connect(home)
    for k in range(n): ws.tokens.create(f"proc-{i}-{k}", ["viewer"])


def test_concurrent_operations_keep_the_chain(db_ws, home):
    "Processes and threads creating tokens at once: every token has its one success record, and the chain verifies."
    ws = db_ws
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_create_tokens, args=(str(home), os.environ.get("MLPLAT_DB_URL"), i, 8)) for i in range(3)]
    for p in procs: p.start()
    with ThreadPoolExecutor(3) as pool:   # threads of one process share the engine, never a transaction
        list(pool.map(lambda k: ws.tokens.create(f"thread-{k}", ["viewer"]), range(12)))
    for p in procs: p.join(300)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    with ws.engine.connect() as c: ids = {r.id for r in c.execute(sa.select(table("api_tokens")))}
    recs = _records(ws, "tokens.create")
    assert len(ids) == 36 and sorted(recs) == sorted((f"token:{i}", "success") for i in ids)
    rep = ws.audit.verify()
    assert rep.ok and rep.records == 36, rep


# ---- signed checkpoints ---------------------------------------------------------------------------------------------
def _rewrite(db, seq: int, **change):
    "What someone with write access to the platform DB can do: edit record `seq`, then recompute every hash after it."
    from mlplat.governance.audit import GENESIS, record_hash
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    prev = GENESIS
    for row in con.execute("SELECT * FROM audit_log ORDER BY seq").fetchall():
        r = dict(row)
        if r["seq"] == seq: r.update(change)
        r["prev_hash"], r["hash"] = prev, record_hash(prev, r)
        prev = r["hash"]
        con.execute("UPDATE audit_log SET principal=?, prev_hash=?, hash=? WHERE seq=?", (r["principal"], r["prev_hash"], r["hash"], r["seq"]))
    con.commit(); con.close()


def test_checkpoints_expose_truncation_and_wholesale_rewrite_via_cli(home, tmp_path):
    import mlplat
    mlplat.connect(home)
    toml = home / "mlplat.toml"
    text = toml.read_text()
    assert "checkpoint_every = 100" in text
    toml.write_text(text.replace("checkpoint_every = 100", "checkpoint_every = 5"))
    ws = mlplat.connect(home)
    for _ in range(12): ws.audit.export()                                     # 12 audited operations
    assert [c["seq"] for c in ws.audit.checkpoints()] == [5, 10]
    ok = run_cli("audit", "verify", check=0).stdout
    assert "OK: " in ok and "2 signed checkpoint(s), the newest of record 10" in ok

    key_file = home / "keys" / "audit-signing.pem"                            # outside the platform DB, owner-only
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # grep in a process of its own: closing a file SQLite has open drops this process's locks on it
    assert subprocess.run(["grep", "-c", "PRIVATE KEY", home / "platform.db"], capture_output=True).returncode == 1
    run_cli("audit", "public-key", "-o", tmp_path / "audit.pem", check=0)     # what an auditor keeps
    assert (tmp_path / "audit.pem").read_text() == ws.audit.public_key()
    (tmp_path / "checkpoints.json").write_text(run_cli("audit", "checkpoints", "--json", check=0).stdout)

    db = home / "platform.db"
    con = sqlite3.connect(db)
    original = con.execute("SELECT seq, principal, prev_hash, hash FROM audit_log ORDER BY seq").fetchall()
    con.close()
    _rewrite(db, 3, principal="someone-else")                                 # a chain that walks clean...
    bad = run_cli("audit", "verify", check=4)
    assert "record 5 no longer has the hash signed" in bad.stdout and "records 1..5 were rewritten" in bad.stdout
    assert "Traceback" not in bad.stderr
    con = sqlite3.connect(db)
    con.executemany("UPDATE audit_log SET principal=?, prev_hash=?, hash=? WHERE seq=?", [(p, ph, h, s) for s, p, ph, h in original])
    con.commit()
    run_cli("audit", "verify", check=0)

    con.execute("DELETE FROM audit_log WHERE seq > 7")                        # truncate, hiding the newest checkpoint too
    con.execute("DELETE FROM audit_checkpoints WHERE seq > 7"); con.commit(); con.close()
    bad = json.loads(run_cli("audit", "verify", "--json", check=4).stdout)     # the journal beside the key still has it
    assert not bad["ok"] and bad["bad_seq"] == 8 and "records 8..10 were deleted (truncated)" in bad["message"]
    (home / "keys" / "audit-checkpoints.jsonl").unlink()
    run_cli("audit", "verify", check=0)                                        # nothing left in the platform tells...
    bad = run_cli("audit", "verify", "--public-key", tmp_path / "audit.pem", "--checkpoints", tmp_path / "checkpoints.json", check=4)
    assert "truncated" in bad.stdout                                           # ...the auditor's copies do


def test_forged_checkpoints_and_foreign_keys_are_refused(ws, tmp_path):
    import base64
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from mlplat.governance.checkpoints import key_id, payload, public_pem
    ws.audit.export()
    cp = ws.audit.checkpoint()
    assert cp["seq"] == 1 and _records(ws, "audit.checkpoint") == [("audit_log", "success")]
    assert ws.audit.verify().ok
    mallory = Ed25519PrivateKey.generate()
    forged = {**cp, "seq": 2, "key_id": key_id(mallory.public_key()), "created_by": "mallory"}
    forged["signature"] = base64.b64encode(mallory.sign(payload(forged))).decode()
    with ws.engine.begin() as c: c.execute(table("audit_checkpoints").insert().values(**forged))
    rep = ws.audit.verify()
    assert not rep.ok and rep.bad_seq == 2 and "not the audit signing key" in rep.message
    with ws.engine.begin() as c: c.execute(sa.delete(table("audit_checkpoints")).where(table("audit_checkpoints").c.seq == 2))
    assert ws.audit.verify().ok
    (tmp_path / "theirs.pem").write_text(public_pem(mallory.public_key()))     # an auditor's key that did not sign them
    bad = run_cli("audit", "verify", "--public-key", tmp_path / "theirs.pem", check=4)
    assert "not the audit signing key" in bad.stdout
    bad = run_cli("audit", "verify", "--public-key", tmp_path / "missing.pem", check=1)
    assert "cannot read the public key file" in bad.stderr and "Traceback" not in bad.stderr


def test_a_workspace_without_the_checkpoint_table_keeps_opening(home):
    import mlplat
    mlplat.connect(home).audit.export()
    con = sqlite3.connect(home / "platform.db")
    con.execute("DROP TABLE audit_checkpoints"); con.commit(); con.close()   # as written by an mlplat before checkpoints
    ws = mlplat.connect(home)
    assert ws.audit.verify().ok and ws.audit.checkpoint()["seq"] == 1 and ws.audit.verify().checkpoints == 1
