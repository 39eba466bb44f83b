from lepton_lab.security.identity import local_user


async def test_server_token_is_the_local_admin(as_user):
    code, me = await as_user("admin", "lepton", "api", "whoami")
    assert code == 200
    assert me["name"] == local_user()
    assert me["roles"] == {"medical": "admin", "finance": "admin"}
    assert "audit:read" in me["permissions"]


async def test_personal_token_carries_teams_roles_and_quotas(as_user):
    code, me = await as_user("bob", "lepton", "api", "whoami")
    assert code == 200
    assert me["name"] == "bob" and me["teams"] == ["finance"] and me["roles"] == {"finance": "analyst"}
    assert me["user_quota"]["max_workers"] == 3 and me["user_quota"]["used"]["workers"] == 0
    assert "clusters:create" in me["permissions"] and "audit:read" not in me["permissions"]
    code, me = await as_user("vera", "lepton", "api", "whoami")
    assert me["roles"] == {"medical": "viewer", "finance": "viewer"}


async def test_no_or_bad_token_is_401(as_user, jp_fetch):
    code, body = await as_user("none", "lepton", "api", "whoami")
    assert code == 401 and "sign in" in body["message"]
    r = await jp_fetch("lepton", "api", "whoami", headers={"Authorization": "token lpt_0000_forged"},
                       raise_error=False)
    assert r.code == 401
