"""The workspace as a whole: moving it keeps every version readable; re-applying points Feast at the new place."""
import shutil

import pandas as pd
import pytest

from helpers import run_cli


def test_moved_workspace_keeps_versions_and_reapply_refreshes_feast(tmp_path, monkeypatch, churn):
    import mlplat
    from mlplat.demo import churn_definitions
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLPLAT_HOME", raising=False)
    old_proj = tmp_path / "proj"
    old_proj.mkdir()
    monkeypatch.chdir(old_proj)
    run_cli("init", check=0, cwd=old_proj, env_extra={"MLPLAT_HOME": ""})
    assert 'home = ".mlplat"' in (old_proj / "mlplat.toml").read_text()
    ws = mlplat.connect()
    ws.features.register_source("customers", churn.customers, classification="personal", timestamp_field="event_timestamp")
    ws.features.register_source("transactions", churn.transactions, classification="personal", timestamp_field="event_timestamp")
    ws.features.apply(churn_definitions())
    before = ws.features.training_set(churn.labels.head(40), service="churn_v1", name="t").to_df()

    new_proj = tmp_path / "moved"
    shutil.move(old_proj, new_proj)
    monkeypatch.chdir(new_proj)
    moved = mlplat.connect()
    assert moved.config.home == new_proj / ".mlplat"
    assert moved.features.datasets.get("customers@1").path.startswith(str(new_proj))
    pd.testing.assert_frame_equal(moved.features.get_training_set("t@1").to_df(), before)
    from mlplat.errors import ValidationError
    with pytest.raises(ValidationError, match="was the workspace moved"):  # Feast still points at the old place
        moved.features.training_set(churn.labels.head(40), service="churn_v1", name="t")
    synced = run_cli("features", "sync", "--json", check=0, cwd=new_proj, env_extra={"MLPLAT_HOME": ""})
    assert '"created": []' in synced.stdout  # a move is not a new definition
    again = moved.features.apply(churn_definitions())
    assert again.created == [] and len(again.unchanged) == 4
    rebuilt = moved.features.training_set(churn.labels.head(40), service="churn_v1", name="t")
    assert rebuilt.id == "t@1"  # same content -> same version, read through the refreshed Feast sources
    assert moved.audit.verify().ok
