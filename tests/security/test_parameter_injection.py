"""Pipeline parameters cannot inject code: names must be plain (non-keyword) identifiers and never a secret's name,
and whatever the values hold, the cell papermill injects is assignments of literals — nothing else. (Running the
nastiest values through real kernels is tests/test_pipelines.py::test_parameter_values_are_data_never_code.)"""
import ast

import pytest
import yaml

from helpers import run_cli, write_notebook
from mlplat.errors import ValidationError
from mlplat.pipelines.spec import Pipeline

NASTY = ['"; __import__("os").system("touch /tmp/pwned"); "', "'''\nimport os\n'''", "\\\"; exec('1') #",
         "{{ params.x }}", "\x00\r\n\u2028", "ünïcødé ☃", "${HOME} $(id) `id`"]


def echo_notebook(path):
    "A notebook with parameters text, items and mapping that prints `text`."
    return write_notebook(path, "text = ''\nitems = []\nmapping = {}", "print(text)")


def test_injected_parameters_are_literal_assignments_only(tmp_path):
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook
    nb = load_notebook_node(str(echo_notebook(tmp_path / "echo.ipynb")))     # as papermill loads it for a run
    values = {"text": NASTY[0], "items": NASTY, "mapping": {k: k for k in NASTY}}
    out = parameterize_notebook(nb, values)
    injected = next(c for c in out.cells if "injected-parameters" in c.metadata.get("tags", []))
    tree = ast.parse(injected.source)
    assigned = {}
    for stmt in tree.body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name), ast.dump(stmt)
        assigned[stmt.targets[0].id] = ast.literal_eval(stmt.value)      # a literal, or this raises
    assert assigned == values


@pytest.mark.parametrize("name, message", [
    ("class", "is not a Python identifier"), ("x; import os", "is not a Python identifier"),
    ("__import__('os')", "is not a Python identifier"), ("db_password", "looks like a secret"),
    ("API_KEY", "looks like a secret"), ("hf_token", "looks like a secret")])
def test_parameter_names_are_plain_and_never_secrets(tmp_path, name, message):
    echo_notebook(tmp_path / "echo.ipynb")
    doc = {"name": "p", "steps": [{"name": "s", "notebook": "echo.ipynb", "parameters": {name: 1}}]}
    with pytest.raises(ValidationError, match=message):
        Pipeline.from_dict(doc, tmp_path)
    doc = {"name": "p", "parameters": {name: 1}, "steps": [{"name": "s", "notebook": "echo.ipynb"}]}
    with pytest.raises(ValidationError, match=message):
        Pipeline.from_dict(doc, tmp_path)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    p = run_cli("pipelines", "check", tmp_path / "p.yaml", check=1)
    assert message in p.stderr and "Traceback" not in p.stderr
