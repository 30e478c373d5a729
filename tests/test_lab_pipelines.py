"""A pipeline run in JupyterLab, driven in Chromium: the run opens as a graph whose steps change state live, a click
opens a step's executed notebook, "log" its log; the sidebar's step table keeps its buttons inside the sidebar."""
import pytest

from helpers import ARTIFACTS, cut_off, sidebar_shows, write_notebook, write_pipeline


def _pipeline(folder):
    write_notebook(folder / "prep.ipynb", "n: int = 2", "import mlplat.pipelines as pl\npl.output('rows', n * 10)")
    write_notebook(folder / "slow.ipynb", "rows: int = 0\nseconds: float = 1.0",
                   "import time\nfor i in range(int(seconds * 2)):\n    print('working', i, flush=True); time.sleep(0.5)")
    write_notebook(folder / "broken.ipynb", "rows: int = 0", "raise RuntimeError(f'the warehouse refused {rows} rows')")
    return write_pipeline(folder, {"name": "graph", "parameters": {"n": 3}, "max_parallel": 2, "steps": [
        {"name": "prep", "notebook": "prep.ipynb", "parameters": {"n": "{{ params.n }}"}},
        {"name": "slow", "notebook": "slow.ipynb", "depends_on": ["prep"],
         "parameters": {"rows": "{{ steps.prep.outputs.rows }}", "seconds": 12.0}},
        {"name": "broken", "notebook": "broken.ipynb", "depends_on": ["prep"], "parameters": {"rows": "{{ steps.prep.outputs.rows }}"}},
        {"name": "report", "notebook": "prep.ipynb", "depends_on": ["slow", "broken"]}]})


@pytest.mark.services
@pytest.mark.browser
def test_a_pipeline_run_opens_as_a_live_graph(home, browser, jupyter_lab, tmp_path):
    import mlplat
    ws = mlplat.connect(home)
    folder = tmp_path / "pipes"
    folder.mkdir()
    spec = _pipeline(folder)
    url, token, root = jupyter_lab(home)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    rec = None
    try:
        page.goto(f"{url}/lab?token={token}")
        page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
        page.click("li.lm-TabBar-tab[data-id='mlplat-sidebar']")
        sidebar_shows(page, "details[data-section='pipelines'] .mlplat-empty", root.parent / "lab.log")
        rec = ws.pipelines.start(spec)          # now, so that its slow step is still running when the graph opens
        page.click("details[data-section='pipelines'] > summary .mlplat-link")
        page.click(f"li[data-run='{rec.id}'] > button.mlplat-item", timeout=30_000)
        page.click(f"button[data-open-run='{rec.id}']")
        graph = f"[data-run-graph='{rec.id}']"
        page.wait_for_selector(f"{graph} g[data-step='slow'][data-state='running']", timeout=90_000)   # seen while it runs
        assert page.get_attribute(f"{graph} g[data-step='prep']", "data-state") == "succeeded"
        assert page.get_attribute(f"{graph} g[data-step='report']", "data-state") == "pending"
        page.screenshot(path=str(ARTIFACTS / "lab-run-graph-live.png"))
        page.wait_for_selector(f"{graph} g[data-step='slow'][data-state='succeeded']", timeout=120_000)   # no reload: it follows
        assert page.get_attribute(f"{graph} g[data-step='broken']", "data-state") == "failed"
        # the runner records `report` skipped once it sees `slow` end: the graph shows it on one of its next polls
        page.wait_for_selector(f"{graph} g[data-step='report'][data-state='skipped']", timeout=30_000)
        assert "local" in page.text_content(f"{graph} g[data-step='slow']")           # its backend and duration
        assert "the warehouse refused 30 rows" in page.text_content(f"{graph} g[data-step='broken'] title")
        page.screenshot(path=str(ARTIFACTS / "lab-run-graph.png"))

        page.click(f"{graph} text[data-step-log='broken']")
        page.wait_for_function(f"(document.querySelector(\"pre[data-step-log-text='{rec.id}/broken']\") || {{}}).textContent"
                               "?.includes('the warehouse refused 30 rows')", timeout=30_000)
        page.click(f"{graph} g[data-step='slow'] rect")
        page.wait_for_selector(".jp-OutputArea-output:has-text('working 23')", timeout=60_000)   # the executed notebook

        # a refresh keeps the opened run open; its step table keeps its buttons inside the sidebar at its default width
        page.click("details[data-section='pipelines'] > summary .mlplat-link")
        page.wait_for_selector("details[data-section='pipelines']:not([aria-busy])", timeout=30_000)
        page.wait_for_selector(f"li[data-run='{rec.id}'] button[data-open-step='slow']", timeout=5_000)
        assert cut_off(page, "#mlplat-sidebar .mlplat-table button", "#mlplat-sidebar") == []
    finally:
        page.close()
        if rec is not None: ws.pipelines.cancel(rec.id, wait=30) if ws.pipelines.get(rec.id).status == "running" else None
    done = ws.pipelines.get(rec.id)
    assert {n: s.status for n, s in done.steps.items()} == {"prep": "succeeded", "slow": "succeeded", "broken": "failed", "report": "skipped"}
