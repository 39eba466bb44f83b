"""Every path a contents-like route takes is decided as the contents manager will resolve it.

A finance analyst (bob) tries medical's workspace, templates and alice's work folder through
every spelling of the path and every door (contents, files, view, nbconvert, checkpoints,
copy, rename); nothing gets through and nothing changes. Members still get in by any spelling.
"""

import json

import nbformat
import pytest

NOTES = "medical notes: patient 17"

# Spellings of teams/medical/<name>, as raw URL paths (percent-encoding is kept as sent).
URL_VARIANTS = [
    "teams/medical/{name}",
    "%74eams/medical/{name}",
    "%74%65%61%6d%73/%6Dedical/{name}",
    "teams%2Fmedical%2F{name}",
    "teams%2F%2Fmedical%2F%2F{name}",
    "./teams/medical/{name}",
    "teams/./medical/{name}",
    "teams/finance/../medical/{name}",
    "teams/finance/%2e%2e/medical/{name}",
    "teams/finance/%2E%2E%2Fmedical/{name}",
    "teams%2Ffinance%2F..%2Fmedical%2F{name}",
    "work/bob/../../teams/medical/{name}",
    "Teams/Medical/{name}",
    "teams/medic%61l/{name}",
]
# Spellings inside a JSON body (copy_from, a rename's destination): nothing decodes them.
BODY_VARIANTS = [
    "teams/medical/{name}",
    "/teams/medical/{name}",
    "./teams/medical/{name}",
    "teams//medical//{name}",
    "teams/finance/../medical/{name}",
    "teams/./medical/./{name}",
    "Teams/medical/{name}",
    "work/bob/../../teams/medical/{name}",
]


@pytest.fixture
def files(jp_root_dir):
    root = jp_root_dir
    (root / "teams" / "medical").mkdir(parents=True)
    (root / "teams" / "finance").mkdir(parents=True)
    (root / "work" / "alice").mkdir(parents=True)
    (root / "teams" / "medical" / "notes.txt").write_text(NOTES)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(NOTES)]
    (root / "teams" / "medical" / "report.ipynb").write_text(nbformat.writes(nb))
    (root / "teams" / "finance" / "own.txt").write_text("finance's own")
    (root / "work" / "alice" / "secret.txt").write_text(NOTES)
    return root


@pytest.fixture
def raw(http_server_client, jp_base_url, jp_serverapp, tokens):
    """``await raw(who, method, raw_path, body=None)`` -> (status, body text); the path goes out as written."""

    async def call(who, method, path, body=None):
        token = jp_serverapp.identity_provider.token if who == "admin" else tokens[who]
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = "{}"
        if isinstance(body, dict):
            body = json.dumps(body)
        r = await http_server_client.fetch(jp_base_url + path, method=method, body=body,
                                           headers={"Authorization": f"token {token}"},
                                           raise_error=False, follow_redirects=False, request_timeout=120)
        return r.code, r.body.decode("utf-8", "replace")

    return call


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


async def test_no_spelling_or_door_reaches_another_teams_files(files, raw):
    before = _snapshot(files)
    file_model = {"type": "file", "format": "text", "content": "overwritten"}
    attempts = []
    for variant in URL_VARIANTS:
        notes = variant.format(name="notes.txt")
        report = variant.format(name="report.ipynb")
        folder = variant.format(name="").rstrip("/")
        attempts += [
            ("read", "GET", f"api/contents/{notes}", None),
            ("read folder", "GET", f"api/contents/{folder}", None),
            ("files", "GET", f"files/{notes}", None),
            ("view", "GET", f"view/{notes}", None),
            ("nbconvert", "GET", f"nbconvert/html/{report}", None),
            ("checkpoints", "GET", f"api/contents/{notes}/checkpoints", None),
            ("checkpoint", "POST", f"api/contents/{notes}/checkpoints", None),
            ("overwrite", "PUT", f"api/contents/{notes}", file_model),
            ("create", "PUT", f"api/contents/{variant.format(name='new.txt')}", file_model),
            ("create in", "POST", f"api/contents/{folder}", {"type": "file"}),
            ("copy into", "POST", f"api/contents/{folder}", {"copy_from": "teams/finance/own.txt"}),
            ("rename out", "PATCH", f"api/contents/{notes}", {"path": "teams/finance/moved.txt"}),
            ("trust", "POST", f"api/contents/{report}/trust", None),
            ("delete", "DELETE", f"api/contents/{notes}", None),
            ("template read", "GET", "api/contents/"
             + variant.replace("teams", "templates").replace("Teams", "Templates")
             .format(name="federated-diagnosis.ipynb"), None),
        ]
    for variant in BODY_VARIANTS:
        attempts += [
            ("copy from", "POST", "api/contents/teams/finance", {"copy_from": variant.format(name="notes.txt")}),
            ("copy to shared", "POST", "api/contents/", {"copy_from": variant.format(name="notes.txt")}),
            ("rename into", "PATCH", "api/contents/teams/finance/own.txt", {"path": variant.format(name="own.txt")}),
            ("rename from", "PATCH", "api/contents/teams/finance/own.txt",
             {"path": variant.replace("medical", "finance").format(name="../../shared.txt")}),
        ]
    for spelling in ("work/alice/secret.txt", "work/%61lice/secret.txt", "work%2Falice%2Fsecret.txt",
                     "work/bob/../alice/secret.txt", "work/bob/%2e%2e/alice/secret.txt", "./work/alice/secret.txt"):
        attempts += [("work read", "GET", f"api/contents/{spelling}", None),
                     ("work files", "GET", f"files/{spelling}", None),
                     ("work delete", "DELETE", f"api/contents/{spelling}", None)]
    attempts += [("work copy", "POST", "api/contents/work/bob", {"copy_from": "work/alice/secret.txt"}),
                 ("folder delete", "DELETE", "api/contents/teams", None),
                 ("folder rename", "PATCH", "api/contents/teams", {"path": "mine"}),
                 ("work folder rename", "PATCH", "api/contents/work", {"path": "mine"})]
    got_through, server_errors = [], []
    for label, method, path, body in attempts:
        code, text = await raw("bob", method, path, body)
        if code >= 500:
            server_errors.append(f"{label}: {method} {path} -> {code} {text[:200]}")
        elif code not in (403, 404):
            got_through.append(f"{label}: {method} {path} -> {code} {text[:200]}")
        assert NOTES not in text, f"{label}: {method} {path} disclosed the file"
    (files.parent / "matrix-count.txt").write_text(str(len(attempts)))
    print(f"contents matrix: {len(attempts)} requests, {len(got_through)} unauthorized successes, "
          f"{len(server_errors)} server errors")
    assert not server_errors, "\n".join(server_errors)
    assert not got_through, "\n".join(got_through)
    # bob's own team's file may be renamed within his team by the matrix; nothing else changed.
    after = _snapshot(files)
    assert {k: v for k, v in after.items() if not k.startswith("teams/finance")} == \
        {k: v for k, v in before.items() if not k.startswith("teams/finance")}
    assert all(NOTES.encode() not in v for k, v in after.items() if k.startswith("teams/finance"))
    assert not any(k.startswith(("mine", "shared")) for k in after)


async def test_members_get_in_by_any_spelling(files, raw):
    for variant in URL_VARIANTS[:12]:
        code, text = await raw("alice", "GET", f"api/contents/{variant.format(name='notes.txt')}")
        assert code == 200 and NOTES in text, (variant, code, text[:200])
    code, text = await raw("alice", "GET", "nbconvert/html/%74eams/medical/report.ipynb")
    assert code == 200 and "patient 17" in text
    code, _ = await raw("alice", "GET", "files/teams%2Fmedical%2Fnotes.txt")
    assert code == 200
    # copies and moves within a team, and into one's own work folder, are fine
    code, text = await raw("bob", "POST", "api/contents/teams/finance", {"copy_from": "teams/finance/own.txt"})
    assert code == 201, text
    code, text = await raw("alice", "POST", "api/contents/work/alice", {"copy_from": "./teams/medical/notes.txt"})
    assert code == 201, text
    code, text = await raw("alice", "PATCH", "api/contents/work/alice/secret.txt", {"path": "work/alice/kept.txt"})
    assert code == 200, text


async def test_a_team_file_does_not_leave_its_team(files, raw):
    # alice may read her team's notes, but not copy or move them where others can read them
    code, text = await raw("alice", "POST", "api/contents/", {"copy_from": "teams/medical/notes.txt"})
    assert code == 403 and "belongs to team medical" in json.loads(text)["message"]
    code, text = await raw("alice", "PATCH", "api/contents/teams/medical/notes.txt", {"path": "public.txt"})
    assert code == 403
    code, _ = await raw("admin", "PATCH", "api/contents/teams/medical/notes.txt", {"path": "archive.txt"})
    assert code == 200  # an admin of the team may
    assert (files / "archive.txt").read_text() == NOTES


async def test_path_denials_are_audited_with_the_request_id(files, raw, as_user):
    code, _ = await raw("bob", "GET", "api/contents/%74eams/medical/notes.txt")
    assert code == 403
    _, log = await as_user("admin", "lepton", "api", "audit", params={"user": "bob", "outcome": "deny"})
    [entry] = [e for e in log["entries"] if e["resource"] == "contents:teams/medical/notes.txt"]
    assert entry["request_id"] and "not a member of team medical" in entry["reason"]


def test_paths_resolve_as_the_contents_manager_resolves_them():
    from lepton_lab.security.authz import Zone, normalise_path, zone_of
    from lepton_lab.security.policy import parse_policy_text

    policy = parse_policy_text("version: 1\nteams: [medical, finance]\n")
    assert normalise_path("/./teams//finance/../medical/x.txt/") == "teams/medical/x.txt"
    assert normalise_path("work/e\u0301mile/a") == "work/\u00e9mile/a"
    for escaping in ("..", "teams/../../x", "a/../../b"):
        with pytest.raises(ValueError, match="above the server's root"):
            normalise_path(escaping)
    with pytest.raises(ValueError):
        normalise_path("teams/medical/\x00")
    assert zone_of(policy, "Teams/MEDICAL/x") == Zone("team", "medical")
    assert zone_of(policy, "teams") == Zone("folder", "teams")
    assert zone_of(policy, "work/bob/a") == Zone("work", "bob")
    assert zone_of(policy, "teamsx/medical") == Zone("shared")
