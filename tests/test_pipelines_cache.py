"""The step cache on a real pipeline of notebooks in real kernels: a re-run with only the last step's parameter changed
runs only that step (and `plan` says so first), reused steps point at the run they came from, a deleted executed
notebook invalidates its entry, `--no-cache` runs everything, and every run records what reproduces it."""
import json
import subprocess
from pathlib import Path

import pytest

from helpers import run_cli, write_notebook, write_pipeline

pytestmark = pytest.mark.slow   # seven notebook executions in real kernels


def executions(counter: Path) -> list[str]:
    return counter.read_text().split() if counter.exists() else []


def plan(spec, *args) -> dict:
    "step -> (action, cached_from, why) from `mlplat pipelines plan --json`."
    steps = json.loads(run_cli("pipelines", "plan", spec, *args, "--json", check=0).stdout)
    return {e["step"]: (e["action"], e["cached_from"], e["why"]) for e in steps}


def test_a_rerun_redoes_only_what_changed_and_plan_says_so_first(ws, tmp_path):
    repo, counter = tmp_path / "repo", tmp_path / "executions.txt"
    repo.mkdir()
    count = f"open({str(counter)!r}, 'a').write(step + '\\n')"
    write_notebook(repo / "source.ipynb", "step = 'source'\nn: int = 1", count, "import mlplat.pipelines as pl\npl.output('total', n * 2)")
    write_notebook(repo / "double.ipynb", "step = 'double'\nx: int = 0", count, "import mlplat.pipelines as pl\npl.output('double', x * 2)")
    write_notebook(repo / "report.ipynb", "step = 'report'\nx: int = 0\nlabel: str = ''", count,
                   "import mlplat.pipelines as pl\npl.output('line', f'{label}: {x}')")
    (repo / "requirements.txt").write_text("numpy\n")
    spec = write_pipeline(repo, {
        "name": "cached", "parameters": {"n": 5, "label": "first"},
        "steps": [
            {"name": "source", "notebook": "source.ipynb", "parameters": {"n": "{{ params.n }}"}},
            {"name": "double", "notebook": "double.ipynb", "depends_on": ["source"],
             "parameters": {"x": "{{ steps.source.outputs.total }}"}},
            {"name": "report", "notebook": "report.ipynb", "depends_on": ["double"],
             "parameters": {"x": "{{ steps.double.outputs.double }}", "label": "{{ params.label }}"}}]})
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "pipeline"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()

    assert plan(spec) == {n: ("run", None, ["never_run"]) if n == "source" else ("run", None, ["upstream_runs"])
                          for n in ("source", "double", "report")}
    first = ws.pipelines.run(spec)
    assert first.status == "succeeded" and executions(counter) == ["source", "double", "report"]
    assert first.steps["report"].outputs == {"line": "first: 20"}
    assert all(s.cache_key and s.cached_from is None for s in first.steps.values())
    r = first.to_dict()["reproduce"]
    assert r["git"] == {"root": str(repo.resolve()), "commit": head, "dirty": False}
    assert r["lock"]["path"] == str(repo.resolve() / "requirements.txt") and len(r["lock"]["sha256"]) == 64
    assert set(r["notebooks"]) == {"source", "double", "report"} and r["environments"]["python3"]["packages"] > 10
    assert set(r["steps"]) == {"source", "double", "report"}

    # the same parameters again: nothing would run; only the last step's parameter changed: only it would run
    assert {n: a for n, (a, _, _) in plan(spec).items()} == {"source": "reuse", "double": "reuse", "report": "reuse"}
    assert plan(spec, "-p", "label=second") == {"source": ("reuse", f"{first.id}/source", []),
                                                "double": ("reuse", f"{first.id}/double", []),
                                                "report": ("run", None, ["parameters"])}
    text = run_cli("pipelines", "plan", spec, "-p", "label=second", check=0).stdout
    assert "parameter label changed" in text and f"reuse   from {first.id}/double" in text

    second = ws.pipelines.run(spec, {"label": "second"})
    assert second.status == "succeeded" and executions(counter) == ["source", "double", "report", "report"]
    assert {n: s.cached_from for n, s in second.steps.items()} == {"source": f"{first.id}/source", "double": f"{first.id}/double",
                                                                   "report": None}
    assert second.steps["report"].outputs == {"line": "second: 20"} and second.steps["double"].outputs == {"double": 20}
    linked = Path(second.steps["double"].notebook)
    assert linked.parent == Path(second.folder) and linked.is_file()
    import nbformat   # sealed at rest as the second run's own step: it opens as such
    assert nbformat.reads(ws.pipelines.notebook(second.id, "double").decode(), as_version=4).cells
    shown = run_cli("pipelines", "show", second.id, check=0).stdout
    assert f"cached from {first.id}/source" in shown and f"git          {head}" in shown
    audit = [e for e in ws.governance.audit.records() if e["action"] == "pipeline.run"][-1]
    assert audit["details"]["cached_from"] == {"source": f"{first.id}/source", "double": f"{first.id}/double"}

    # a deleted executed notebook invalidates its entry; the copy in the second run's folder still holds it
    Path(first.steps["double"].notebook).unlink()
    assert plan(spec, "-p", "label=second")["double"] == ("reuse", f"{second.id}/double", [])
    linked.unlink()
    p = plan(spec, "-p", "label=second")
    assert p["source"][0] == "reuse" and p["double"][:2] == ("run", None) and p["double"][2] == ["artifact_gone"]
    assert p["report"] == ("run", None, ["upstream_runs"])

    # --no-cache runs every step; what it leaves is reused afterwards
    r = run_cli("pipelines", "run", spec, "--no-cache", "-p", "label=second", "--json", check=0)
    third = json.loads(r.stdout)
    assert [s["cached_from"] for s in third["steps"]] == [None, None, None]
    assert executions(counter) == ["source", "double", "report", "report", "source", "double", "report"]
    assert {n: a for n, (a, _, _) in plan(spec, "-p", "label=second").items()} == {"source": "reuse", "double": "reuse", "report": "reuse"}
    assert {n: a for n, (a, _, _) in plan(spec, "-p", "label=second", "--no-cache").items()} == {
        "source": "run", "double": "run", "report": "run"}

    # a changed notebook: it and what depends on it run; the committed folder is now dirty
    write_notebook(repo / "double.ipynb", "step = 'double'\nx: int = 0", count, "import mlplat.pipelines as pl\npl.output('double', x * 3)")
    p = plan(spec, "-p", "label=second")
    assert p["source"][0] == "reuse" and p["double"] == ("run", None, ["notebook"]) and p["report"][2] == ["upstream_runs"]
    assert ws.pipelines.plan(spec, {"label": "second"}, cache=True)[1]["reasons"] == ["notebook changed"]

    # a failed run, fixed and resumed: what it reused or ran stays, only the failed step runs again
    report = ("import mlplat.pipelines as pl\n"
              "if label == 'boom': raise ValueError('boom')\n"
              "pl.output('line', f'{label}: {x}')")
    write_notebook(repo / "report.ipynb", "step = 'report'\nx: int = 0\nlabel: str = ''", count, report)
    before = len(executions(counter))
    failed = ws.pipelines.run(spec, {"label": "boom"})
    assert failed.status == "failed" and failed.steps["source"].cached_from and failed.steps["double"].cached_from is None
    assert executions(counter)[before:] == ["double", "report"]
    write_notebook(repo / "report.ipynb", "step = 'report'\nx: int = 0\nlabel: str = ''", count, report.replace("'boom'", "'bang'"))
    resumed = ws.pipelines.resume(failed.id)
    assert resumed.status == "succeeded" and resumed.steps["report"].outputs == {"line": "boom: 30"}
    assert executions(counter)[before:] == ["double", "report", "report"] and resumed.steps["double"].attempts == 1
