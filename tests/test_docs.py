"""The docs stay true: the README's option table and the feature template match the code."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_documents_every_option():
    from mlplat.config import options_markdown
    assert options_markdown() in (REPO / "README.md").read_text()


def test_feature_template_matches_demo_definitions():
    import yaml
    from mlplat.demo import churn_definitions, definitions_yaml
    template = yaml.safe_load((REPO / "templates/features/churn_features.yaml").read_text())
    assert template == yaml.safe_load(definitions_yaml(churn_definitions()))


def test_readme_has_the_two_commands():
    text = (REPO / "README.md").read_text()
    assert "make demo" in text and "make test" in text
