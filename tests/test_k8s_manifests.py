"""Rendered TrainJob manifests validate against the real Kubeflow Trainer CRD schema (../shared/schemas/k8s)."""
from pathlib import Path

import jsonschema
import pytest
import yaml

from mlplat.jobs.k8s import render_trainjob
from mlplat.jobs.spec import TrainingJob

SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "k8s"


def crd_schema(name):
    path = SCHEMAS / name
    if not path.exists():
        pytest.skip(f"{path} is not present (the shared schemas sit beside the repository)")
    crd = yaml.safe_load(path.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], crd


@pytest.mark.parametrize("spot,gpus", [(False, 0), (True, 8)])
def test_trainjob_validates_against_the_crd(spot, gpus):
    schema, crd = crd_schema("trainer.kubeflow.org_trainjobs.yaml")
    job = TrainingJob("churn", "pkg.train:main", image="registry.local/mlplat:0.1", args=["--epochs", 3],
                      resources={"nodes": 2, "processes_per_node": max(gpus, 2), "gpus_per_node": gpus, "cpu": 4, "memory": "16Gi"},
                      priority_class="low" if spot else None, spot=spot)
    m = render_trainjob(job, "churn-1a2b", env={"MLPLAT_JOB_ID": "churn-1a2b"})
    jsonschema.validate(m, schema)
    assert m["apiVersion"] == f"{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}"
    assert m["spec"]["runtimeRef"]["name"] == yaml.safe_load((SCHEMAS / "deepspeed_distributed_runtime.yaml").read_text())["metadata"]["name"]


def test_a_broken_manifest_is_caught_by_the_schema():
    schema, _ = crd_schema("trainer.kubeflow.org_trainjobs.yaml")
    m = render_trainjob(TrainingJob("churn", "pkg.train:main", image="img"), "churn-1")
    m["spec"]["trainer"]["numNodes"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(m, schema)
