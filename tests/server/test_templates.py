"""Team templates: listed per team, copied into the user's workspace, guarded in the contents API."""



async def test_each_team_sees_its_own_templates(as_user):
    _, alice = await as_user("alice", "lepton", "api", "templates")
    assert [(t["team"], t["name"]) for t in alice["templates"]] == [("medical", "federated-diagnosis")]
    assert alice["templates"][0]["title"] == "Federated Diagnosis"
    _, bob = await as_user("bob", "lepton", "api", "templates")
    assert [(t["team"], t["name"]) for t in bob["templates"]] == [("finance", "fraud-detection")]
    _, vera = await as_user("vera", "lepton", "api", "templates")
    assert len(vera["templates"]) == 2


async def test_copy_into_workspace_and_open(as_user, jp_root_dir):
    code, out = await as_user("alice", "lepton", "api", "templates", "copy", method="POST",
                              body={"team": "medical", "name": "federated-diagnosis"})
    assert code == 201 and out["path"] == "work/alice/federated-diagnosis.ipynb"
    assert (jp_root_dir / out["path"]).exists()
    code, again = await as_user("alice", "lepton", "api", "templates", "copy", method="POST",
                                body={"team": "medical", "name": "federated-diagnosis"})
    assert again["path"] == "work/alice/federated-diagnosis-1.ipynb"  # never overwrites
    code, err = await as_user("alice", "lepton", "api", "templates", "copy", method="POST",
                              body={"team": "finance", "name": "fraud-detection"})
    assert code == 404 and "finance" in err["message"]
    code, err = await as_user("alice", "lepton", "api", "templates", "copy", method="POST",
                              body={"team": "medical", "name": "../../../etc/passwd"})
    assert code == 404


async def test_contents_api_guards_team_folders(as_user):
    path = ["api", "contents", "templates", "finance", "fraud-detection.ipynb"]
    code, _ = await as_user("bob", *path)
    assert code == 200
    code, err = await as_user("alice", *path)
    assert code == 403 and "alice has no role in finance" in err["message"]
    code, _ = await as_user("vera", *path)
    assert code == 200
    # reading is not writing: nobody but admins changes a template
    model = {"type": "notebook", "format": "json",
             "content": {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}}
    code, _ = await as_user("bob", *path, method="PUT", body=model)
    assert code == 403
    code, _ = await as_user("admin", *path, method="PUT", body=model)
    assert code == 200
    # directory listing of another team's folder
    code, _ = await as_user("alice", "api", "contents", "templates", "finance")
    assert code == 403


async def test_terminals_for_admins_only(as_user):
    code, _ = await as_user("alice", "api", "terminals", method="POST")
    assert code == 403
    code, body = await as_user("admin", "api", "terminals", method="POST")
    assert code == 200
    await as_user("admin", "api", "terminals", body["name"], method="DELETE")
