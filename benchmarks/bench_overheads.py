"""Two start-up costs mlplat avoids, each against its baseline in the same run.

1. `import feast` as Feast ships it (typeguard recompiles its `@typechecked` functions at import) against
   `mlplat.features.feast_repo.import_feast()` (the same import with that instrumentation off). Fresh interpreters,
   interleaved, ROUNDS each; medians.
2. `mlflow.<flavor>.log_model` with MLflow's pip-requirement inference (it reloads the model in a subprocess)
   against the flavor's own requirements (`mlplat.models.onnx.flavor_requirements`), for an ONNX, a PyTorch and a
   scikit-learn model, into a throwaway SQLite tracking store. Interleaved, ROUNDS each; medians.

Writes benchmarks/.work/overheads.json and prints the ratios. No assertions: the numbers are reported.
"""
import json, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT/"benchmarks"/".work"/"overheads.json"
ROUNDS = 3


def fresh(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def feast_import() -> dict:
    plain, mlplat = [], []
    fresh("import feast")  # warm-up: fills the page cache
    for _ in range(ROUNDS):
        plain.append(fresh("import feast"))
        mlplat.append(fresh("from mlplat.features.feast_repo import import_feast; import_feast()"))
    a, b = statistics.median(plain), statistics.median(mlplat)
    return {"import_feast_s": a, "mlplat_import_feast_s": b, "ratio": b / a, "rounds": ROUNDS}


def log_model() -> dict:
    import mlflow, numpy as np, onnx, torch
    from sklearn.linear_model import LogisticRegression
    from mlplat.models.onnx import export_onnx, flavor_requirements
    mlflow.set_tracking_uri(f"sqlite:///{tempfile.mkdtemp()}/mlflow.db")
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    graph = onnx.load_from_string(export_onnx(net, x[:4]))   # exported once: only the logging is timed
    models = {"onnx": (lambda **kw: mlflow.onnx.log_model(graph, name="m",
                                                          save_as_external_data=False, **kw)),
              "pytorch": (lambda **kw: mlflow.pytorch.log_model(net, name="m", input_example=x[:5], **kw)),
              "sklearn": (lambda **kw: mlflow.sklearn.log_model(LogisticRegression().fit(x, x[:, 0] > 0), name="m",
                                                                input_example=x[:5], **kw))}
    out = {}
    for flavor, log in models.items():
        inferred, given = [], []
        for _ in range(ROUNDS):
            for times, kw in ((inferred, {}), (given, {"pip_requirements": flavor_requirements(flavor)})):
                with mlflow.start_run():
                    t = time.perf_counter(); log(**kw); times.append(time.perf_counter() - t)
        a, b = statistics.median(inferred), statistics.median(given)
        out[flavor] = {"inferred_s": a, "flavor_requirements_s": b, "ratio": b / a, "rounds": ROUNDS}
    return out


def main():
    res = {"feast_import": feast_import(), "log_model": log_model()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2))
    f = res["feast_import"]
    print(f"import feast {f['import_feast_s']:.2f} s; via import_feast {f['mlplat_import_feast_s']:.2f} s; ratio {f['ratio']:.2f}")
    for flavor, r in res["log_model"].items():
        print(f"log_model {flavor:8s} inferred {r['inferred_s']:.2f} s; flavor requirements {r['flavor_requirements_s']:.3f} s; "
              f"ratio {r['ratio']:.3f}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
