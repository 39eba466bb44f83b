"""Random requests over every Lepton route: nothing answers 5xx, nothing hangs, errors are one-line JSON."""

import base64
import json
import random

from tornado.httpclient import HTTPClientError

SEED = 20251
REQUESTS = 320
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
ROUTES = (
    "whoami", "profiles", "clusters", "clusters/{cid}", "clusters/{cid}/allocation", "clusters/{cid}/stream",
    "clusters/{cid}/credentials", "templates", "templates/copy", "audit", "join", "models",
    "models/{team}/{name}", "models/{team}/{name}/versions", "models/{team}/{name}/versions/{ref}",
    "models/{team}/{name}/versions/{ref}/manifest", "models/{team}/{name}/versions/{ref}/artifact",
    "models/{team}/{name}/versions/{ref}/predict", "models/{team}/{name}/aliases/{ref}", "{junk}",
    "clusters/{junk}", "models/{junk}",
)
ODD_TEXT = ("", "x", "medical", "finance", "..", "%2e%2e", "%ff%fe", "%00", "a%2Fb", "\u00e9", "%E2%80%AE",
            "1", "latest", "production", "-1", "9" * 40, "A" * 300, "nan", "inf", "%", "%%", "+", " ")
FIELDS = ("team", "profile", "name", "workers", "gpus", "threads", "memory", "site", "inputs", "version",
          "token", "hosts", "copy_from", "path", "interval", "kernel")


def _value(rng, depth=0):
    kind = rng.randrange(11 if depth < 3 else 7)
    if kind == 0:
        return rng.choice((None, True, False))
    if kind == 1:
        return rng.choice((0, -1, 1, 2**63, -(2**70), 10**400, 257, 3))
    if kind == 2:
        return rng.choice((0.5, -0.0, 1e308, -1e-308, 3.7))
    if kind in (3, 4, 5, 6):
        return rng.choice(ODD_TEXT + ("cloud", "edge", "4GiB", "1e40GiB", "local", "../../etc/passwd"))
    if kind in (7, 8):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(FIELDS): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _body(rng):
    kind = rng.randrange(8)
    if kind == 0:
        return b""
    if kind == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))  # not UTF-8, not JSON
    if kind == 2:
        return b'{"team": "' + b"m" * (70 * 1024) + b'"}'  # over the JSON limit
    if kind == 3:
        return json.dumps([_value(rng)] * 3).encode()
    if kind == 4:
        return b"{" * 5000  # deep, unfinished
    return json.dumps({rng.choice(FIELDS): _value(rng) for _ in range(rng.randrange(1, 5))}).encode()


def _query(rng):
    pairs = []
    for _ in range(rng.randrange(4)):
        key = rng.choice(("interval", "since", "limit", "user", "team", "verify", "colour", "outcome", "%ff"))
        pairs.append(f"{key}={rng.choice(ODD_TEXT + ('2025-01-01', '0.5', '10', '1'))}")
    return "&".join(pairs)


async def test_random_requests_never_fail_the_server(as_user, http_server_client, jp_base_url, jp_serverapp,
                                                     tokens):
    rng = random.Random(SEED)
    code, cluster = await as_user("alice", "lepton", "api", "clusters", method="POST",
                                  body={"team": "medical", "workers": {"cloud": 1, "edge": 0}})
    assert code == 201, cluster
    who_tokens = {**tokens, "admin": jp_serverapp.identity_provider.token, "none": ""}
    failures, counts = [], {"tried": 0, "4xx": 0, "2xx": 0}
    for _ in range(REQUESTS):
        route = rng.choice(ROUTES).format(
            cid=rng.choice((cluster["id"], cluster["name"], rng.choice(ODD_TEXT) or "x")),
            team=rng.choice(("medical", "finance", "nope", "%2e%2e")), name=rng.choice(("diagnosis", "x", "%ff")),
            ref=rng.choice(("1", "latest", "production", "0", "99999999999999999999", "%00")),
            junk=rng.choice(ODD_TEXT + ("x/y/z", "clusters/a/b/c/d")))
        method = rng.choice(METHODS)
        who = rng.choice(tuple(who_tokens))
        headers = {"Authorization": f"token {who_tokens[who]}" if who_tokens[who] else ""}
        if rng.random() < 0.3:
            headers["X-Request-Id"] = rng.choice(ODD_TEXT)
        if rng.random() < 0.3:
            headers["X-Lepton-Manifest"] = rng.choice(
                (base64.b64encode(json.dumps(_value(rng)).encode()).decode(), "%%%", ""))
        query = _query(rng)
        # A raw space breaks the request line itself (tornado's HTTP layer answers that): send it encoded.
        url = (f"{jp_base_url}lepton/api/{route}" + (f"?{query}" if query else "")).replace(" ", "%20")
        body = _body(rng) if method in ("POST", "PUT", "PATCH") else None
        counts["tried"] += 1
        try:
            r = await http_server_client.fetch(url, method=method, body=body, headers=headers, raise_error=False,
                                               follow_redirects=False, request_timeout=120,
                                               allow_nonstandard_methods=True)
        except HTTPClientError as e:  # 599: the server did not answer in time
            failures.append(f"{method} {url} as {who}: no answer ({e})")
            continue
        if r.code >= 500:
            failures.append(f"{method} {url} as {who}: {r.code} {r.body[:200]!r}")
        elif r.code >= 400:
            counts["4xx"] += 1
            try:
                message = json.loads(r.body)["message"]
            except (ValueError, KeyError, TypeError):
                failures.append(f"{method} {url} as {who}: {r.code} is not JSON: {r.body[:120]!r}")
                continue
            if not message or "\n" in message:
                failures.append(f"{method} {url} as {who}: {r.code} message {message!r}")
        elif r.code < 300:
            counts["2xx"] += 1
    print(f"fuzz: {counts['tried']} requests, {counts['2xx']} 2xx, {counts['4xx']} 4xx, "
          f"{sum('no answer' in f or ': 5' in f for f in failures)} server errors or hangs")
    assert not failures, "\n".join(failures[:40])
    # the server still answers normally afterwards
    code, me = await as_user("alice", "lepton", "api", "whoami")
    assert code == 200 and me["name"] == "alice"
