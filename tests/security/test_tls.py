"""TLS in transit: with a certificate and key, `mlplat serve` speaks only TLS on its REST and gRPC ports; with a client
CA, gRPC demands a client certificate signed by it (mutual TLS). Bad TLS files are refused at start, clearly."""
import ssl

import httpx
import numpy as np
import pytest

from helpers import BIN, free_port, onnx_chain, run_cli, start_process, stop_process, wait_http

trustme = pytest.importorskip("trustme")


@pytest.fixture
def pki(tmp_path):
    "A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."
    ca = trustme.CA()
    files = {"ca": tmp_path / "ca.pem"}
    ca.cert_pem.write_to_path(files["ca"])
    for who, identity in (("server", "127.0.0.1"), ("client", "scorer.clients.example")):
        cert = ca.issue_cert(identity)
        files[f"{who}_cert"], files[f"{who}_key"] = tmp_path / f"{who}.pem", tmp_path / f"{who}.key"
        cert.cert_chain_pems[0].write_to_path(files[f"{who}_cert"])
        cert.private_key_pem.write_to_path(files[f"{who}_key"])
    return files


@pytest.mark.services
def test_rest_and_mutual_tls_grpc(ws, pki, tmp_path):
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException
    model = onnx_chain(tmp_path / "relu.onnx")
    port, grpc_port = free_port(), free_port()
    token = ws.tokens.create("scorer", ["inference-client"])["token"]
    log = tmp_path / "serve.log"
    proc = start_process([BIN / "mlplat", "serve", "--model", f"relu={model}", "--port", port, "--grpc-port", grpc_port,
                          "--refresh", "0", "--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"],
                          "--tls-client-ca", pki["ca"]], log)
    try:
        base = f"https://127.0.0.1:{port}"
        wait_http(f"{base}/v2/health/ready", proc, log, timeout=60, verify=ssl.create_default_context(cafile=pki["ca"]))
        assert "https://127.0.0.1" in log.read_text() and "mutual TLS" in log.read_text()
        x = np.arange(8, dtype=np.float32).reshape(2, 4) - 3
        body = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
        with httpx.Client(verify=ssl.create_default_context(cafile=pki["ca"])) as c:
            r = c.post(f"{base}/v2/models/relu/infer", json=body, headers={"authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            assert c.post(f"{base}/v2/models/relu/infer", json=body).status_code == 401     # TLS is not authentication
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5)              # no plaintext HTTP
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/v2/health/ready", timeout=5)                                 # an unknown CA is refused

        url = f"127.0.0.1:{grpc_port}"
        meta = {"authorization": f"Bearer {token}"}
        i = tg.InferInput("input", [2, 4], "FP32"); i.set_data_from_numpy(x)
        mutual = tg.InferenceServerClient(url, ssl=True, root_certificates=str(pki["ca"]),
                                          private_key=str(pki["client_key"]), certificate_chain=str(pki["client_cert"]))
        np.testing.assert_allclose(mutual.infer("relu", [i], headers=meta).as_numpy("output"), np.maximum(x, 0))
        for client in (tg.InferenceServerClient(url, ssl=True, root_certificates=str(pki["ca"])),    # no client certificate
                       tg.InferenceServerClient(url)):                                             # plaintext
            with pytest.raises(InferenceServerException, match="UNAVAILABLE|handshake|failed to connect|Socket closed"):
                client.infer("relu", [i], headers=meta, client_timeout=10)
    finally:
        stop_process(proc)


def test_bad_tls_files_are_refused_at_start(ws, pki, tmp_path):
    model = onnx_chain(tmp_path / "relu.onnx")
    common = ["serve", "--model", f"relu={model}", "--port", str(free_port())]
    p = run_cli(*common, "--tls-cert", pki["server_cert"], "--tls-key", pki["client_key"], check=2)    # someone else's key
    assert "do not load together" in p.stderr and "Traceback" not in p.stderr
    p = run_cli(*common, "--tls-cert", pki["server_cert"], check=2)
    assert "both a certificate and its private key" in p.stderr
    p = run_cli(*common, "--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"], "--tls-client-ca", tmp_path / "nope.pem", check=2)
    assert "does not exist" in p.stderr
    p = run_cli("tokens", "list", env_extra={"MLPLAT_SERVING_TLS_CERT": "server.pem"}, check=2)     # the config itself is checked
    assert "serving.tls_cert and serving.tls_key go together" in p.stderr
