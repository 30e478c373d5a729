"""A local OIDC issuer on 127.0.0.1 for tests and benchmarks: discovery document and JWKS over HTTP, keys that rotate
and retire, users with stable subject ids."""
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa


class Issuer:
    "A local OIDC issuer on 127.0.0.1: discovery document and JWKS over HTTP, keys that rotate and retire."
    def __init__(self):
        self.keys, self.retired, self.jwks_fetches, self.last_fetch = {}, {}, 0, 0.0
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

    def retire_key(self, kid):
        "Stop publishing `kid` (tokens can still be signed with it, as a thief holding the leaked key would)."
        self.retired[kid] = self.keys.pop(kid)

    @staticmethod
    def sub(user):
        "The stable subject id of `user` at this issuer (a real one is opaque: a UUID)."
        return f"u-{user}"

    def principal(self, user="mo"):
        "The mlplat principal name of `user`'s tokens: `oidc:<issuer>#<sub>`."
        return f"oidc:{self.url}#{self.sub(user)}"

    def public_jwk(self, kid):
        key = self.keys[kid]
        algo = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
        return {**json.loads(algo.to_jwk(key.public_key())), "kid": kid, "use": "sig"}

    def token(self, kid="k1", signing_key=None, alg=None, **claims):
        "A token for the user named by `preferred_username` (default mo), with `sub` following from it unless given."
        now, user = int(time.time()), claims.get("preferred_username", "mo")
        body = {"iss": self.url, "aud": "mlplat", "sub": self.sub(user), "preferred_username": user, "iat": now, "exp": now + 600,
                "groups": ["ml-eng"], "amr": ["pwd"], **claims}
        key = signing_key or self.keys.get(kid) or self.retired[kid]
        alg = alg or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
        return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg, headers={"kid": kid})


def use_oidc(home, issuer, step_up=("tokens.create", "models.promote@champion"), extra=""):
    "Turn the workspace at `home` (initialized by the local provider) into an OIDC workspace; `extra`: more [identity] lines."
    import mlplat
    mlplat.connect(home)
    cfg = home / "mlplat.toml"
    identity = (f'[identity]\nprovider = "oidc"\noidc_issuer = "{issuer.url}"\noidc_audience = "mlplat"\nroles_claim = "groups"\n'
                f'role_map = {{"ml-admins" = "admin", "ml-eng" = "ml-engineer", "everyone" = "viewer"}}\n'
                f'step_up = {json.dumps(list(step_up))}\n{extra}\n')
    text = re.sub(r"\[identity\]\n.*?\n\n", identity, cfg.read_text(), count=1, flags=re.S)
    cfg.write_text(text)
    from mlplat.config import Config
    from mlplat.workspace import Workspace
    return Workspace(Config.load(home))
