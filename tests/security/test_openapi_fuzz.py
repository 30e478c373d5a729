"""Schemathesis against the serving server's own OpenAPI document (`GET /v2/openapi.json`): generated requests —
valid and invalid, every documented operation, other methods on the same paths — never get a 5xx, and every
response (status, content type, body, `Allow` on a 405) is as the document says."""
import subprocess

import pytest

from helpers import BIN, onnx_chain

pytestmark = pytest.mark.services   # `mlplat serve` under schemathesis


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(ws, server, tmp_path):
    model = onnx_chain(tmp_path / "relu.onnx")
    rest = server(f"relu={model}", refresh="0", auth="required")
    token = ws.tokens.create("fuzzer", ["inference-client"])["token"]
    # positive_data_acceptance is left out: the document is the protocol's (any tensor), and a request that is
    # valid OIP but does not fit this model's inputs must be refused with 400 — which that check counts as a failure
    p = subprocess.run([str(BIN / "st"), "run", f"http://{rest}/v2/openapi.json", "-H", f"Authorization: Bearer {token}",
                        "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--max-examples", "40",
                        "--seed", "20261126", "--no-color"], capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    assert "Tested: 10" in out and "5xx" not in out.split("SUMMARY")[-1]
