"""Identity that cannot collide and policy that cannot be weakened from the side: OIDC principals named by issuer and
`sub` (a `preferred_username` never inherits a local user's bindings), https issuers, signing keys that expire after
`oidc_jwks_cache_seconds`, policy options refused as environment variables and from another user's parent folder, and
default roles that read the work but not the audit log, tokens or keys."""
import json
import os
import re
import time

import pytest

from helpers import clear_mlplat_env, run_cli
from mlplat.errors import AuthenticationError, ConfigError, PermissionDenied
from oidc_issuer import Issuer, use_oidc


@pytest.fixture
def issuer():
    i = Issuer()
    yield i
    i.server.shutdown()
    i.server.server_close()


def bind(home, **bindings):
    "Add `[rbac.bindings]` lines (principal name -> roles) to the workspace's mlplat.toml."
    toml = home / "mlplat.toml"
    lines = "".join(f'{json.dumps(who)} = {json.dumps(roles)}\n' for who, roles in bindings.items())
    toml.write_text(toml.read_text().replace("[rbac.bindings]\n", "[rbac.bindings]\n" + lines, 1))


@pytest.mark.services
def test_a_preferred_username_never_inherits_a_local_users_bindings(home, issuer):
    use_oidc(home, issuer, step_up=())
    bind(home, ada=["admin"])                                       # the local user ada, bound before OIDC was turned on
    from mlplat.config import Config
    from mlplat.workspace import Workspace
    base = Workspace(Config.load(home))
    impostor = base.authenticate(issuer.token(preferred_username="ada", sub="someone-else", groups=[]))
    assert impostor.principal.name == f"oidc:{issuer.url}#someone-else" and impostor.principal.roles == ()
    assert impostor.principal.claims["display_name"] == "ada"
    with pytest.raises(PermissionDenied, match=re.escape(f"'oidc:{issuer.url}#someone-else' (roles: none) may not models:read")):
        impostor.models.list()

    bind(home, **{issuer.principal("ada"): ["ml-engineer"]})          # bound by issuer and sub: that is ada
    base = Workspace(Config.load(home))
    ada = base.authenticate(issuer.token(preferred_username="ada", groups=[]))
    assert ada.info()["principal"] == issuer.principal("ada") and ada.models.list() == []
    with pytest.raises(PermissionDenied, match="may not tokens:create"):   # ml-engineer, not the local ada's admin
        ada.tokens.create("x", ["viewer"])


@pytest.mark.services
def test_a_claim_declared_unique_names_principals_in_the_oidc_namespace(home, issuer):
    base = use_oidc(home, issuer, step_up=(), extra='oidc_principal_claim = "email"\n')
    mo = base.authenticate(issuer.token(email="mo@example.com"))
    assert (mo.principal.name, mo.principal.roles) == ("oidc:mo@example.com", ("ml-engineer",))
    with pytest.raises(AuthenticationError, match="no 'email' claim"):
        base.authenticate(issuer.token())


@pytest.mark.services
def test_a_retired_signing_key_stops_verifying_after_the_cache_time(home, issuer):
    issuer.add_key("k2")
    base = use_oidc(home, issuer, step_up=(), extra="oidc_jwks_cache_seconds = 1\n")
    assert base.authenticate(issuer.token(kid="k1")).principal.name == issuer.principal("mo")
    fetches = issuer.jwks_fetches
    issuer.retire_key("k1")                                          # e.g. it leaked: tokens signed with it must stop working
    time.sleep(1.5)                                                  # past oidc_jwks_cache_seconds
    with pytest.raises(AuthenticationError, match="no signing key 'k1'.*retired"):
        base.authenticate(issuer.token(kid="k1"))
    assert base.authenticate(issuer.token(kid="k2")).principal.name == issuer.principal("mo")
    assert issuer.jwks_fetches == fetches + 1                        # one refetch, and k2 came with it


def test_plain_http_issuers_are_refused_except_on_loopback(home):
    import mlplat
    from mlplat.config import Config
    mlplat.connect(home)
    toml = home / "mlplat.toml"
    text = toml.read_text()
    def oidc(issuer):
        return (text.replace('provider = "local"', 'provider = "oidc"', 1).replace('oidc_issuer = ""', f'oidc_issuer = "{issuer}"', 1)
                .replace('oidc_audience = ""', 'oidc_audience = "mlplat"', 1))
    for issuer, refused in (("http://login.example.com/realms/ml", True), ("https://login.example.com/realms/ml", False),
                            ("http://localhost:8080/realms/ml", False)):
        toml.write_text(oidc(issuer))
        if refused:
            with pytest.raises(ConfigError, match="identity.oidc_issuer 'http://login.example.com/realms/ml' is not an https URL"):
                Config.load(home)
        else:
            assert Config.load(home).identity.oidc_issuer == issuer
    toml.write_text(oidc("http://10.1.2.3/realms/ml"))
    out = run_cli("info", check=2)
    assert "is not an https URL" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("var", ["MLPLAT_ENCRYPTION_AT_REST", "MLPLAT_IDENTITY_PROVIDER", "MLPLAT_IDENTITY_STEP_UP",
                                 "MLPLAT_RESIDENCY_RULES", "MLPLAT_IDENTITY_OIDC_ISSUER", "MLPLAT_RBAC_BINDINGS"])
def test_policy_cannot_be_relaxed_by_an_environment_variable(ws, var):
    out = run_cli("info", env_extra={var: ""}, check=2)
    assert f"{var} is set, but" in out.stderr and "mlplat.toml" in out.stderr and "Traceback" not in out.stderr
    run_cli("info", env_extra={"MLPLAT_JOBS_MAX_CONCURRENT": "3"}, check=0)   # other options still follow the environment


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_an_mlplat_toml_of_another_user_in_a_parent_folder_is_refused(tmp_path, monkeypatch):
    clear_mlplat_env(monkeypatch)
    shared, work = tmp_path / "shared", tmp_path / "shared" / "me" / "project"
    work.mkdir(parents=True)
    planted = shared / "mlplat.toml"
    planted.write_text('[rbac.bindings]\n"mallory" = ["admin"]\n')
    os.chown(planted, 65534, 65534)                                  # nobody's
    out = run_cli("info", cwd=work, check=2)
    assert f"{planted}, found in a parent folder" in out.stderr and "uid 65534" in out.stderr
    assert "MLPLAT_CONFIG" in out.stderr and "Traceback" not in out.stderr
    os.chown(planted, 0, 0)                                          # root's: trusted
    assert json.loads(run_cli("info", "--json", cwd=work, check=0).stdout)["config_file"] == str(planted.resolve())
    os.chown(planted, 65534, 65534)
    out = run_cli("info", "--json", cwd=shared, check=0)             # in the working directory: the user's own choice
    assert json.loads(out.stdout)["config_file"] == str(planted.resolve())


def test_default_roles_read_the_work_but_not_the_audit_log_tokens_or_keys(ws):
    viewer, scientist, auditor = (ws.authenticate(ws.tokens.create(n, [n])["token"]) for n in ("viewer", "data-scientist", "auditor"))
    for who in (viewer, scientist):
        assert who.models.list() == [] and who.features.list() == [] and who.features.datasets.list() == []
        for read in (lambda: who.audit.records(), lambda: who.tokens.list(), lambda: who.keys.list()):
            with pytest.raises(PermissionDenied):
                read()
    assert scientist.jobs.list() == []
    with pytest.raises(PermissionDenied, match="'sa:viewer' \\(roles: viewer\\) may not jobs:read"):
        viewer.jobs.list()
    assert auditor.audit.records() and auditor.tokens.list() and auditor.keys.list() is not None
