"""What mlplat renders for Kubernetes validates against the real CRDs (tests/fixtures/crds): TrainJob manifests
against Kubeflow Trainer's, the KServe ClusterServingRuntime template against KServe's — no field a strict
`kubectl apply` would refuse."""
import jsonschema
import pytest
import yaml

from helpers import REPO, crd, crd_schema, undeclared_fields
from mlplat.jobs.k8s import render_trainjob
from mlplat.jobs.spec import TrainingJob

TRAINJOB = "trainer.kubeflow.org_trainjobs.yaml"
SERVING_RUNTIME = "serving.kserve.io_clusterservingruntimes.yaml"


@pytest.mark.parametrize("spot,gpus", [(False, 0), (True, 8)])
def test_trainjob_validates_against_the_crd(spot, gpus):
    job = TrainingJob("churn", "pkg.train:main", image="registry.local/mlplat:0.1", args=["--epochs", 3],
                      resources={"nodes": 2, "processes_per_node": max(gpus, 2), "gpus_per_node": gpus, "cpu": 4, "memory": "16Gi"},
                      priority_class="low" if spot else None, spot=spot)
    m = render_trainjob(job, "churn-1a2b", env={"MLPLAT_JOB_ID": "churn-1a2b"})
    jsonschema.validate(m, crd_schema(TRAINJOB))
    assert undeclared_fields(m, crd_schema(TRAINJOB)) == []
    spec = crd(TRAINJOB)["spec"]
    assert m["apiVersion"] == f"{spec['group']}/{spec['versions'][0]['name']}" and m["kind"] == spec["names"]["kind"]
    assert m["spec"]["runtimeRef"]["name"] == crd("deepspeed_distributed_runtime.yaml")["metadata"]["name"]


def test_a_broken_manifest_is_caught_by_the_schema():
    m = render_trainjob(TrainingJob("churn", "pkg.train:main", image="img"), "churn-1")
    m["spec"]["trainer"]["numNodes"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(m, crd_schema(TRAINJOB))
    m["spec"]["trainer"]["numNodes"] = 2
    m["spec"]["trainer"]["numNode"] = 2                    # a typo: jsonschema lets it pass, a strict apply does not
    assert undeclared_fields(m, crd_schema(TRAINJOB)) == ["$.spec.trainer.numNode"]


def test_the_serving_runtime_template_validates_against_the_crd():
    "templates/serving/mlplat-servingruntime.yaml, which `mlplat deployments render` names for sealed models."
    runtime = yaml.safe_load((REPO / "templates" / "serving" / "mlplat-servingruntime.yaml").read_text())
    spec = crd(SERVING_RUNTIME)["spec"]
    [version] = [v["name"] for v in spec["versions"] if v["served"]]
    assert (runtime["apiVersion"], runtime["kind"]) == (f"{spec['group']}/{version}", spec["names"]["kind"])
    schema = crd_schema(SERVING_RUNTIME, version)
    jsonschema.validate(runtime, schema)
    assert undeclared_fields(runtime, schema) == []
    broken = yaml.safe_load(yaml.safe_dump(runtime))
    broken["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'integer'"):
        jsonschema.validate(broken, schema)
