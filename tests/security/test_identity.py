"""Zero Trust identity: OIDC bearer JWTs verified against a local issuer's JWKS (over HTTP), service-account API
tokens, step-up MFA. Every refusal carries the right error, is audited without the credential, and changes nothing."""
import json
import re
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from helpers import run_cli
from mlplat.errors import AuthenticationError, PermissionDenied
from oidc_issuer import Issuer, use_oidc


@pytest.fixture
def issuer():
    i = Issuer()
    yield i
    i.server.shutdown()


def hs256_with_public_key(issuer, now):
    "The algorithm-confusion attack: an HMAC token keyed with the issuer's public key (PyJWT would refuse to make one)."
    import base64, hashlib, hmac
    from cryptography.hazmat.primitives import serialization
    pem = issuer.keys["k1"].public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps({"iss": issuer.url, "aud": "mlplat", "sub": "x", "groups": ["ml-admins"], "iat": now, "exp": now + 60}).encode())
    return f"{head}.{body}." + b64(hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest())


def login_refusals(ws):
    return [r for r in ws.governance.audit.records() if r["action"] == "auth.login"]


def test_bearer_jwts_are_verified_against_the_issuers_keys_and_refusals_are_audited(home, issuer):
    base = use_oidc(home, issuer)
    mo = base.authenticate(issuer.token())
    assert (mo.principal.name, mo.principal.roles, mo.principal.provider) == (issuer.principal("mo"), ("ml-engineer",), "oidc")
    assert mo.principal.claims["display_name"] == "mo"
    assert mo.info()["roles"] == ["ml-engineer"]
    assert base.authenticate("Bearer " + issuer.token(groups=["unmapped", "everyone"])).principal.roles == ("viewer",)

    now = int(time.time())
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    unsigned = jwt.encode({"iss": issuer.url, "aud": "mlplat", "sub": "x", "iat": now, "exp": now + 60}, None, algorithm="none")
    refused = {
        "expired": (issuer.token(iat=now - 4000, exp=now - 3600), "has expired"),
        "wrong audience": (issuer.token(aud="another-app"), "another audience"),
        "wrong issuer": (issuer.token(iss="http://127.0.0.1:1/realms/evil"), "not issued by"),
        "not yet valid": (issuer.token(nbf=now + 3600), "not valid yet"),
        "no subject": (issuer.token(sub=None), "no 'sub' claim"),
        "forged signature": (issuer.token(signing_key=attacker, groups=["ml-admins"]), "does not verify"),
        "unknown key": (issuer.token(kid="made-up", signing_key=attacker), "no signing key 'made-up'"),
        "alg none": (unsigned, "'none' are not accepted"),
        "HS256 keyed with the public key": (hs256_with_public_key(issuer, now), "'HS256' are not accepted"),
        "no token": (None, "requires a bearer token"),
        "garbage": ("definitely-not-a-jwt", "not a JWT"),
    }
    for case, (token, message) in refused.items():
        with pytest.raises(AuthenticationError, match=re.escape(message)):
            base.authenticate(token)
    records = login_refusals(mo)
    assert len(records) == len(refused) and all(r["outcome"] == "denied" for r in records)
    log = json.dumps(records)
    assert not [t for t, _ in refused.values() if t and max(t.split("."), key=len) in log]   # no credential in the audit log
    assert mo.governance.audit.verify().ok

    # key rotation: a token signed with a new key is accepted (one refetch); made-up key ids do not hammer the issuer
    time.sleep(max(0.0, 10.5 - (time.monotonic() - issuer.last_fetch)))   # past the 10 s refetch cooldown
    issuer.add_key("k2", kind="ec")
    assert base.authenticate(issuer.token(kid="k2")).principal.name == issuer.principal("mo")
    fetches = issuer.jwks_fetches
    for i in range(20):
        with pytest.raises(AuthenticationError, match="no signing key"):
            base.authenticate(issuer.token(kid=f"bogus-{i}", signing_key=attacker))
    assert issuer.jwks_fetches - fetches <= 1


def test_step_up_actions_need_mfa_and_no_role_escalates(home, issuer):
    base = use_oidc(home, issuer)
    admin_pwd = base.authenticate(issuer.token(preferred_username="ada", groups=["ml-admins"], amr=["pwd"]))
    with pytest.raises(PermissionDenied, match="tokens.create needs multi-factor authentication"):
        admin_pwd.tokens.create("ci-bot", ["viewer"])
    viewer = base.authenticate(issuer.token(preferred_username="vera", groups=["everyone"], amr=["pwd", "mfa"]))
    with pytest.raises(PermissionDenied, match=re.escape(f"'{issuer.principal('vera')}' (roles: viewer) may not tokens:create")):
        viewer.tokens.create("ci-bot", ["admin"])
    assert admin_pwd.tokens.list(include_inactive=True) == []           # nothing was created

    admin_mfa = base.authenticate(issuer.token(preferred_username="ada", groups=["ml-admins"], amr=["pwd", "mfa"]))
    made = admin_mfa.tokens.create("ci-bot", ["viewer"], expires="1d")
    bot = base.authenticate(made["token"])
    assert (bot.principal.name, bot.principal.roles) == ("sa:ci-bot", ("viewer",))
    with pytest.raises(PermissionDenied, match="may not tokens:create"):   # a viewer's token cannot mint an admin one
        bot.tokens.create("escalated", ["admin"])
    with pytest.raises(PermissionDenied, match="may not tokens:revoke"):
        bot.tokens.revoke(made["id"])
    assert [t["name"] for t in admin_mfa.tokens.list()] == ["ci-bot"]
    denied = [(r["principal"], r["action"]) for r in admin_mfa.governance.audit.records() if r["outcome"] == "denied"]
    assert denied == [(issuer.principal("ada"), "tokens.create"), (issuer.principal("vera"), "tokens.create"),
                      ("sa:ci-bot", "tokens.create"), ("sa:ci-bot", "tokens.revoke")]


def test_cli_acts_as_the_bearer_of_mlplat_token(home, issuer, monkeypatch):
    import mlplat
    mlplat.connect(home)                                                # the local OS user is the admin
    made = json.loads(run_cli("tokens", "create", "nightly", "--role", "data-scientist", "--expires", "7d", "--json", check=0).stdout)
    assert made["token"].startswith("mlp_") and made["principal"] == "sa:nightly"
    listed = run_cli("tokens", "list", check=0).stdout
    assert made["id"] in listed and made["token"] not in listed
    as_bot = {"MLPLAT_TOKEN": made["token"]}
    assert json.loads(run_cli("info", "--json", env_extra=as_bot, check=0).stdout)["principal"] == "sa:nightly"
    refused = run_cli("tokens", "create", "x", "--role", "admin", env_extra=as_bot, check=3)
    assert "may not tokens:create" in refused.stderr and "Traceback" not in refused.stderr
    run_cli("tokens", "revoke", made["id"], check=0)
    gone = run_cli("info", env_extra=as_bot, check=3)
    assert "was revoked" in gone.stderr and "Traceback" not in gone.stderr and made["token"] not in gone.stderr

    use_oidc(home, issuer)
    expired = run_cli("info", env_extra={"MLPLAT_TOKEN": issuer.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 4000)}, check=3)
    assert "the token has expired" in expired.stderr and "sign in again" in expired.stderr
    ok = json.loads(run_cli("info", "--json", env_extra={"MLPLAT_TOKEN": issuer.token()}, check=0).stdout)
    assert (ok["principal"], ok["roles"]) == (issuer.principal("mo"), ["ml-engineer"])
    assert "requires a bearer token" in run_cli("info", check=3).stderr
