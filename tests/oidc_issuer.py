"""A local OIDC issuer on 127.0.0.1 for tests and benchmarks: discovery document and JWKS over HTTP, keys that rotate."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa


class Issuer:
    "A local OIDC issuer on 127.0.0.1: discovery document and JWKS over HTTP, keys that rotate."
    def __init__(self):
        self.keys, self.jwks_fetches, self.last_fetch = {}, 0, 0.0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.endswith("/.well-known/openid-configuration"):
                    body = {"issuer": issuer.url, "jwks_uri": issuer.url + "/protocol/openid-connect/certs"}
                elif self.path.endswith("/certs"):
                    issuer.jwks_fetches += 1
                    issuer.last_fetch = time.monotonic()
                    body = {"keys": [issuer.public_jwk(kid) for kid in list(issuer.keys)]}
                else:
                    self.send_response(404); self.end_headers(); return
                data = json.dumps(body).encode()
                self.send_response(200); self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)

            def log_message(self, *a): pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/realms/ml"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.add_key("k1")

    def add_key(self, kid, kind="rsa"):
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())

    def public_jwk(self, kid):
        key = self.keys[kid]
        algo = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
        return {**json.loads(algo.to_jwk(key.public_key())), "kid": kid, "use": "sig"}

    def token(self, kid="k1", signing_key=None, alg=None, **claims):
        now = int(time.time())
        body = {"iss": self.url, "aud": "mlplat", "sub": "u-42", "preferred_username": "mo", "iat": now, "exp": now + 600,
                "groups": ["ml-eng"], "amr": ["pwd"], **claims}
        key = signing_key or self.keys[kid]
        alg = alg or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
        return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg, headers={"kid": kid})
