"""The docs stay true: the README is short, its links and notebook example work, every notebook and page is in the
site's navigation, the option table on the operators page is the code's, and `make docs` renders the site."""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NBS = REPO / "notebooks"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def local_links(path: Path) -> list[str]:
    "Relative link targets of a markdown file (no URLs, no in-page anchors), without their anchors."
    targets = (m.group(1) for m in LINK.finditer(path.read_text()))
    return [t.split("#")[0] for t in targets if "://" not in t and not t.startswith(("#", "mailto:"))]


def sidebar_files() -> list[str]:
    "Every file `notebooks/sidebar.yml` lists, in order."
    def walk(items):
        for it in items:
            if isinstance(it, str): yield it
            else: yield from walk(it["contents"])
    return list(walk(yaml.safe_load((NBS / "sidebar.yml").read_text())["website"]["sidebar"]["contents"]))


def renderer():
    "notebooks/_render_docs.py, the renderer behind `make docs`, as a module."
    import importlib.util
    spec = importlib.util.spec_from_file_location("render_docs", NBS / "_render_docs.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def test_operators_page_documents_every_option():
    from mlplat.options import options_markdown
    assert options_markdown() in (NBS / "operators.qmd").read_text(), (
        "the option table in notebooks/operators.qmd is stale: replace it with the output of `mlplat config docs`")


def test_feature_template_matches_demo_definitions():
    from mlplat.demo import churn_definitions, definitions_yaml
    template = yaml.safe_load((REPO / "templates/features/churn_features.yaml").read_text())
    assert template == yaml.safe_load(definitions_yaml(churn_definitions()))


def test_readme_is_short_and_has_the_two_commands():
    text = (REPO / "README.md").read_text()
    assert "make demo" in text and "make test" in text
    assert len(text.splitlines()) <= 150, "the README stays under ~150 lines: move details to notebooks/*.qmd"


@pytest.mark.parametrize("doc", ["README.md", "notebooks/users.qmd", "notebooks/operators.qmd",
                                 "notebooks/developers.qmd", "notebooks/index.qmd"])
def test_links_point_to_files_that_exist(doc):
    path = REPO / doc
    missing = [t for t in local_links(path) if not (path.parent / t).exists()]
    assert not missing, f"{doc} links to files that do not exist: {missing}"


def test_sidebar_lists_every_notebook_and_page_once():
    listed = sidebar_files()
    on_disk = {p.name for p in NBS.iterdir() if p.suffix in (".ipynb", ".qmd") and not p.name.startswith(("_", "."))}
    assert not (missing := sorted(on_disk - set(listed))), (
        f"add to notebooks/sidebar.yml, under its area: {missing}")
    assert not (gone := [f for f in listed if f not in on_disk]), f"notebooks/sidebar.yml lists missing files: {gone}"
    assert len(listed) == len(set(listed)), "notebooks/sidebar.yml lists a file twice"
    assert listed[0] == "index.qmd", "the site's home page comes first"


def test_page_names_are_those_nbdev_docs_writes():
    "The renderer names pages as nbdev/Quarto do, so nbdev's doc links (`show_doc`, backticked names) resolve."
    output_name = renderer().output_name
    assert output_name("20_workspace.ipynb") == "workspace.html"
    assert output_name("54a_serving_features.ipynb") == "serving_features.html"
    assert output_name("operators.qmd") == "operators.html"
    from nbdev.frontmatter import _nbpath2html
    for nb in NBS.glob("*.ipynb"): assert output_name(nb.name) == _nbpath2html(nb).name


@pytest.mark.slow
def test_make_docs_renders_every_page(tmp_path):
    out = tmp_path / "site"
    p = subprocess.run([sys.executable, "notebooks/_render_docs.py", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    pages = {renderer().output_name(f) for f in sidebar_files()}
    assert pages <= {f.name for f in out.glob("*.html")}
    for page in out.glob("*.html"):
        html = page.read_text()
        broken = [h for h in re.findall(r'href="([^"#:]+\.(?:html|ipynb|qmd))', html) if not (out / h).exists()]
        assert not broken, f"{page.name} links to pages that do not exist: {broken}"
    workspace = (out / "workspace.html").read_text()
    assert 'id="connect"' in workspace and "#| export" not in workspace   # API blocks rendered, directives gone
    assert "workspace.home" in (out / "operators.html").read_text()


@pytest.mark.slow
def test_readme_notebook_example_runs(tmp_path):
    "The README's example, as it is, in an empty folder: data -> features -> training job -> model -> serving."
    text = (REPO / "README.md").read_text()
    code = re.search(r"## From a notebook\s+```python\n(.*?)```", text, re.S).group(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    assert "port=8080" in code
    (tmp_path / "example.py").write_text(code.replace("port=8080", f"port={port}"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPLAT_")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    p = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"http://127.0.0.1:{port}" in p.stdout and "'alias': 'champion'" in p.stdout
