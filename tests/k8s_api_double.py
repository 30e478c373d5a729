"""A local HTTP double of the Kubernetes API — the one sanctioned double (no cluster can run here).

It serves the slice of the API the Kubernetes job backend uses, the way the API server answers it:
TrainJob custom objects (create / get / list / delete, validated against the real Kubeflow Trainer
CRD schema: an invalid object gets the 422 an API server gives), Argo Workflows and CronWorkflows (create / get /
list / merge-patch / delete, validated against the real Argo CRDs the same way), Secrets (create / get / delete, and
deleted with the object that owns them), pods listed by label selector, and pod logs. Bearer-token auth like a real cluster. The test plays the controller: it sets a TrainJob's
status conditions and adds the pods JobSet would create, or sets a Workflow's phase and nodes and adds its pod.
"""
import json
import re
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import jsonschema
import yaml

from helpers import crd_schema

TRAINJOB_CRD = "trainer.kubeflow.org_trainjobs.yaml"   # in tests/fixtures/crds
TRAINJOBS = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+)(/log)?)?$")
WORKFLOW_CRDS = {"workflows": "argoproj.io_workflows.yaml", "cronworkflows": "argoproj.io_cronworkflows.yaml"}
ARGO = re.compile(r"^/apis/argoproj\.io/v1alpha1/namespaces/([^/]+)/(workflows|cronworkflows)(?:/([^/]+))?$")
ARGO_KINDS = {"workflows": "Workflow", "cronworkflows": "CronWorkflow"}
SECRETS = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets(?:/([^/]+))?$")


def _now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class KubeApiDouble:
    def __init__(self, token="test-token"):
        self.token = token
        self.trainjobs, self.pods, self.logs, self.requests, self.secrets = {}, {}, {}, [], {}
        self.argo = {"workflows": {}, "cronworkflows": {}}   # plural -> {(namespace, name): object}
        self._argo_validators = {}
        self.lock = threading.Lock()
        self.schema = crd_schema(TRAINJOB_CRD)
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body, text=False):
                data = body.encode() if text else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n)) if n else {}

            def _handle(self, method):
                url = urlparse(self.path)
                body = self._body() if method in ("POST", "DELETE", "PATCH") else None
                with double.lock:
                    double.requests.append((method, url.path, parse_qs(url.query), body))
                if self.headers.get("Authorization") != f"Bearer {double.token}":
                    return self._send(401, _status(401, "Unauthorized", "Unauthorized"))
                code, out, text = double.route(method, url.path, parse_qs(url.query), body)
                self._send(code, out, text)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_DELETE(self):
                self._handle("DELETE")

            def do_PATCH(self):
                self._handle("PATCH")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def configure(self, monkeypatch, folder: Path, image: str):
        "The workspace's Kubernetes settings for this double: its kubeconfig, the home's claim, a default image."
        monkeypatch.setenv("MLPLAT_KUBERNETES_KUBECONFIG", str(self.kubeconfig(folder / "kubeconfig")))
        monkeypatch.setenv("MLPLAT_KUBERNETES_HOME_CLAIM", "mlplat-home")
        monkeypatch.setenv("MLPLAT_KUBERNETES_IMAGE", image)

    def kubeconfig(self, path: Path, namespace="default") -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "double",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": self.token}}],
            "contexts": [{"name": "double", "context": {"cluster": "double", "user": "tester", "namespace": namespace}}]}))
        return path

    # ---- the API ----------------------------------------------------------------------------
    def route(self, method, path, query, body):
        m = TRAINJOBS.match(path)
        if m:
            return self._trainjobs(method, m.group(1), m.group(2), query, body)
        m = ARGO.match(path)
        if m:
            return self._argo(method, m.group(1), m.group(2), m.group(3), body)
        m = SECRETS.match(path)
        if m:
            return self._secrets(method, m.group(1), m.group(2), body)
        m = PODS.match(path)
        if m and method == "GET":
            ns, name, log = m.groups()
            if name is None:
                sel = dict(kv.split("=", 1) for kv in query.get("labelSelector", [""])[0].split(",") if kv)
                items = [p for (pns, _), p in sorted(self.pods.items()) if pns == ns
                         and all(p["metadata"]["labels"].get(k) == v for k, v in sel.items())]
                return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}, False
            pod = self.pods.get((ns, name))
            if pod is None:
                return 404, _status(404, "NotFound", f'pods "{name}" not found'), False
            if log:
                if pod["status"]["phase"] == "Pending":
                    return 400, _status(400, "BadRequest", f'container "node" in pod "{name}" is waiting to start: ContainerCreating'), False
                return 200, self.logs.get((ns, name), ""), True
            return 200, pod, False
        return 404, _status(404, "NotFound", "the server could not find the requested resource"), False

    def _secrets(self, method, ns, name, body):
        "Secrets: create, read, delete (what the job backend does with the identity of a job's pods)."
        if method == "POST" and name is None:
            key = (ns, (body.get("metadata") or {}).get("name"))
            if not key[1] or not isinstance(body.get("stringData", body.get("data", {})), dict):
                return 422, _status(422, "Invalid", "Secret is invalid: metadata.name and data are required"), False
            if key in self.secrets:
                return 409, _status(409, "AlreadyExists", f'secrets "{key[1]}" already exists'), False
            obj = json.loads(json.dumps(body))
            obj["metadata"].update({"uid": str(uuid.uuid4()), "creationTimestamp": _now(), "namespace": ns})
            self.secrets[key] = obj
            return 201, obj, False
        obj = self.secrets.get((ns, name))
        if obj is None:
            return 404, _status(404, "NotFound", f'secrets "{name}" not found'), False
        if method == "DELETE":
            del self.secrets[(ns, name)]
        return 200, obj, False

    def _deleted(self, gone, pod_label):
        "What deleting `gone` answers; the Secrets it owned and its pods (labelled `pod_label`=its name) go with it."
        name = gone["metadata"]["name"]
        self._collect_garbage(gone["metadata"]["uid"])
        for key in [k for k, p in self.pods.items() if p["metadata"]["labels"].get(pod_label) == name]:
            del self.pods[key]
            self.logs.pop(key, None)
        return 200, _status(200, "", "") | {"status": "Success", "details": {"name": name}}, False

    def _collect_garbage(self, owner_uid):
        "What a deleted object owned goes with it (Kubernetes' garbage collector)."
        for key in [k for k, o in self.secrets.items()
                    if any(r.get("uid") == owner_uid for r in o["metadata"].get("ownerReferences") or [])]:
            del self.secrets[key]

    def _trainjobs(self, method, ns, name, query, body):
        if method == "POST" and name is None:
            try:
                jsonschema.validate(body, self.schema)
            except jsonschema.ValidationError as e:
                where = ".".join(map(str, e.absolute_path))
                return 422, _status(422, "Invalid", f'TrainJob.trainer.kubeflow.org "{body.get("metadata", {}).get("name")}" '
                                                    f'is invalid: {where}: {e.message}'), False
            key = (ns, body["metadata"]["name"])
            if key in self.trainjobs:
                return 409, _status(409, "AlreadyExists", f'trainjobs.trainer.kubeflow.org "{key[1]}" already exists'), False
            obj = json.loads(json.dumps(body))
            obj["metadata"].update({"uid": str(uuid.uuid4()), "creationTimestamp": _now(), "resourceVersion": "1",
                                    "namespace": ns})
            self.trainjobs[key] = obj
            return 201, obj, False
        if method == "GET" and name is None:
            items = [o for (ons, _), o in self.trainjobs.items() if ons == ns]
            return 200, {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJobList", "items": items,
                         "metadata": {"resourceVersion": "1"}}, False
        obj = self.trainjobs.get((ns, name))
        if obj is None:
            return 404, _status(404, "NotFound", f'trainjobs.trainer.kubeflow.org "{name}" not found'), False
        if method == "GET":
            return 200, obj, False
        if method == "DELETE":
            return self._deleted(self.trainjobs.pop((ns, name)), "jobset.sigs.k8s.io/jobset-name")
        return 405, _status(405, "MethodNotAllowed", method), False

    def argo_validator(self, plural):
        "A validator of the CRD's schema, built once (jsonschema.validate checks a 2.8 MB schema itself first: seconds)."
        if plural not in self._argo_validators:
            schema = crd_schema(WORKFLOW_CRDS[plural])
            self._argo_validators[plural] = jsonschema.validators.validator_for(schema)(schema)
        return self._argo_validators[plural]

    def _argo_invalid(self, plural, obj):
        "The 422 an API server answers for an object its CRD's schema refuses, or None."
        errors = sorted(self.argo_validator(plural).iter_errors(obj), key=lambda e: list(e.absolute_path))
        if not errors:
            return None
        e = errors[0]
        return 422, _status(422, "Invalid", f'{ARGO_KINDS[plural]}.argoproj.io "{(obj.get("metadata") or {}).get("name")}" is invalid: '
                                            f'{".".join(map(str, e.absolute_path))}: {e.message}'), False

    def _argo(self, method, ns, plural, name, body):
        store, kind = self.argo[plural], ARGO_KINDS[plural]
        if method == "POST" and name is None:
            body = json.loads(json.dumps(body))
            meta = body.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            invalid = self._argo_invalid(plural, body)
            if invalid:
                return invalid
            key = (ns, meta["name"])
            if key in store:
                return 409, _status(409, "AlreadyExists", f'{plural}.argoproj.io "{key[1]}" already exists'), False
            meta.update({"uid": str(uuid.uuid4()), "creationTimestamp": _now(), "resourceVersion": "1", "namespace": ns})
            store[key] = body
            return 201, body, False
        if method == "GET" and name is None:
            items = [o for (ons, _), o in store.items() if ons == ns]
            return 200, {"apiVersion": "argoproj.io/v1alpha1", "kind": f"{kind}List", "items": items,
                         "metadata": {"resourceVersion": "1"}}, False
        obj = store.get((ns, name))
        if obj is None:
            return 404, _status(404, "NotFound", f'{plural}.argoproj.io "{name}" not found'), False
        if method == "GET":
            return 200, obj, False
        if method == "PATCH":  # a JSON merge patch (RFC 7386), what the client sends for a dict body
            patched = _merge_patch(obj, body)
            invalid = self._argo_invalid(plural, patched)
            if invalid:
                return invalid
            patched["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
            store[(ns, name)] = patched
            return 200, patched, False
        if method == "DELETE":
            return self._deleted(store.pop((ns, name)), "workflows.argoproj.io/workflow")
        return 405, _status(405, "MethodNotAllowed", method), False

    # ---- the controller, played by the test -------------------------------------------------
    def set_workflow_status(self, name, phase, node_phase=None, message=None, outputs=None, started=True, ns="default", nodes=None):
        """The Workflow's phase and its one step pod's node (or `nodes`, a DAG's), as Argo's controller writes them
        (validated against the CRD)."""
        wf = self.argo["workflows"][(ns, name)]
        node = {"id": f"{name}-1", "name": name, "displayName": name, "type": "Pod", "templateName": wf["spec"]["entrypoint"],
                "phase": node_phase or phase}
        if started:
            node["startedAt"] = wf.get("status", {}).get("startedAt") or _now()
        if message:
            node["message"] = message
        if outputs is not None:
            node["outputs"] = {"parameters": [{"name": "outputs", "value": json.dumps(outputs)}], "exitCode": "0"}
        status = {"phase": phase, "startedAt": node.get("startedAt", _now()), "nodes": {node["id"]: node} if nodes is None else nodes}
        if message:
            status["message"] = message
        status_schema = {"type": "object", "properties": crd_schema(WORKFLOW_CRDS["workflows"])["properties"]["status"]["properties"]}
        jsonschema.validators.validator_for(status_schema)(status_schema).validate(status)
        wf["status"] = status

    def set_workflow_pod(self, workflow, phase="Running", log="", exit_code=None, ns="default"):
        "The step's pod (containers `wait` and `main`) with the log of `main`."
        name = f"{workflow}-step-1234567890"
        state = {"running": {"startedAt": _now()}} if exit_code is None else \
            {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error", "startedAt": _now(), "finishedAt": _now()}}
        self.pods[(ns, name)] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"workflows.argoproj.io/workflow": workflow}},
            "spec": {"containers": [{"name": "wait", "image": "argoexec"}, {"name": "main", "image": "img"}]},
            "status": {"phase": phase, "containerStatuses": [
                {"name": "main", "image": "img", "imageID": "img@sha256:0", "ready": phase == "Running", "restartCount": 0,
                 "state": state}] if phase != "Pending" else []}}
        self.logs[(ns, name)] = log
        return name


    def set_status(self, name, ns="default", conditions=(), active=0, failed=0, succeeded=0):
        conds = [{"type": t, "status": "True", "reason": reason, "message": message, "lastTransitionTime": _now()}
                 for t, reason, message in conditions]
        jobs = [{"name": "launcher", "active": active, "failed": failed, "ready": active, "succeeded": succeeded, "suspended": 0}]
        status = {"conditions": conds, "jobsStatus": jobs}
        jsonschema.validate(status, self.schema["properties"]["status"])
        self.trainjobs[(ns, name)]["status"] = status

    def set_pod(self, trainjob, role, index=0, phase="Running", log="", exit_code=None, ns="default"):
        name = f"{trainjob}-{role}-0-{index}-x7k2q"
        state = {"running": {"startedAt": _now()}} if exit_code is None else \
            {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                            "startedAt": _now(), "finishedAt": _now()}}
        self.pods[(ns, name)] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {
                "jobset.sigs.k8s.io/jobset-name": trainjob, "jobset.sigs.k8s.io/replicatedjob-name": role,
                "batch.kubernetes.io/job-completion-index": str(index)}},
            "spec": {"containers": [{"name": "node", "image": "img"}]},
            "status": {"phase": phase, "containerStatuses": [
                {"name": "node", "image": "img", "imageID": "img@sha256:0", "ready": phase == "Running",
                 "restartCount": 0, "state": state}] if phase != "Pending" else []}}
        self.logs[(ns, name)] = log
        return name


def _merge_patch(target, patch):
    "RFC 7386: mappings merge key by key, null deletes, anything else replaces."
    if not isinstance(patch, dict):
        return json.loads(json.dumps(patch))
    out = json.loads(json.dumps(target)) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge_patch(out.get(k), v)
    return out
