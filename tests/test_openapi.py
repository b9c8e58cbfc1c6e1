"""The OpenAPI description (jupyter_offline_token/openapi.json) is kept true: every route and
method of the server's handler table is described and nothing else is, every error code is in
it, the server serves it, and the answers of real flows (consent with the dev provider, tokens,
access tokens, tasks, events, pages, errors) validate against it."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from typing import Any

import httpx
import pytest
from fault_injection import FaultInjector
from jsonschema import Draft202012Validator
from openapi_validator import SpecValidator, parse_events
from rest_scenarios import MAX_PENDING, ServerWorld, run
from server_fixtures import Api, grant, task_processes
from tornado import web

from jupyter_offline_token import rest_codes
from jupyter_offline_token.handlers.openapi import load_spec
from jupyter_offline_token.kernel.testing import FakeOfflineTokenAPI
from jupyter_offline_token.oidc import ProviderClient

pytestmark = pytest.mark.timeout(120)

PACKAGE = "jupyter_offline_token."
VERBS = ("get", "post", "put", "patch", "delete")
ERROR = "/components/schemas/Error"


def _operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, m) for path, item in spec["paths"].items() for m in item if m in VERBS}


def _routes_of(router: Any) -> list[tuple[str, type]]:
    """Every (pattern, handler class) in a tornado router, nested routers included."""
    found: list[tuple[str, type]] = []
    for rule in getattr(router, "rules", []):
        target = rule.target
        if hasattr(target, "rules"):
            found.extend(_routes_of(target))
        elif isinstance(target, type) and hasattr(rule.matcher, "regex"):
            found.append((rule.matcher.regex.pattern, target))
    return found


def _template(pattern: str, base_url: str) -> str:
    """``/base/api/offline-token/tokens/(?P<token_id>[^/]+)$`` -> ``/api/.../{token_id}``."""
    path = pattern.removesuffix("$").removeprefix(base_url.rstrip("/"))
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path)
    return path.replace("/?", "/")


def _methods(handler: type) -> set[str]:
    """The verbs a handler class implements (RequestHandler's own answer 405)."""
    return {m for m in VERBS if getattr(handler, m) is not getattr(web.RequestHandler, m)}


def test_the_spec_is_well_formed():
    spec = load_spec()
    assert spec["openapi"].startswith("3.1")
    for schema in spec["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    text = json.dumps(spec)
    for ref in set(re.findall(r'"\$ref": "#([^"]+)"', text)):
        node: Any = spec
        for part in ref.strip("/").split("/"):
            assert part in node, f"unresolved $ref #{ref}"
            node = node[part]
    ids = [op["operationId"] for path, m in _operations(spec) for op in [spec["paths"][path][m]]]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for path, item in spec["paths"].items():
        declared = {p["$ref"].rsplit("/", 1)[1] for p in item.get("parameters", [])}
        names = {spec["components"]["parameters"][d]["name"] for d in declared}
        assert names == set(re.findall(r"{(\w+)}", path)), path


def test_every_route_and_method_is_described_and_back(jp_serverapp, jp_base_url):
    """Fails when a route or a verb is added to the server without describing it (or a described
    one disappears): the server's own handler table, not a list kept by hand."""
    served: set[tuple[str, str]] = set()
    for pattern, handler in _routes_of(jp_serverapp.web_app.default_router):
        if handler.__module__.startswith(PACKAGE):
            served |= {(_template(pattern, jp_base_url), m) for m in _methods(handler)}
    described = _operations(load_spec())
    assert served, "no route of the extension found in the server's handler table"
    assert sorted(served - described) == [], "routes the spec does not describe"
    assert sorted(described - served) == [], "described routes the server does not have"


def test_every_error_code_is_in_the_spec():
    schemas = load_spec()["components"]["schemas"]
    json_codes = set(schemas["ErrorCode"]["enum"])
    page_codes = set(schemas["CallbackErrorCode"]["enum"])
    assert not json_codes & page_codes
    assert sorted(json_codes | page_codes) == sorted(rest_codes.CODES)
    # Every JSON code's status is a status some operation answers with a JSON error.
    statuses = {
        int(status)
        for item in load_spec()["paths"].values()
        for m, op in item.items()
        if m in VERBS
        for status in op["responses"]
    }
    # 405 is any route's answer to a verb it does not take; 500 is a bug, never described;
    # jupyter_server refuses a missing credential with 403, not 401.
    undescribed = {rest_codes.INTERNAL_ERROR, rest_codes.ERROR, rest_codes.UNAUTHORIZED}
    missing = {
        c: rest_codes.CODES[c].status
        for c in json_codes - undescribed
        if rest_codes.CODES[c].status not in statuses | {405}
    }
    assert missing == {}, "codes whose status no operation describes"
    # Each status's error schema lists exactly the codes rest_codes gives that status, so an
    # answer whose code and status disagree fails the validation of real answers.
    for name, schema in schemas.items():
        if re.fullmatch(r"Error\d{3}", name):
            status = int(name[5:])
            expected = [
                c for c in schemas["ErrorCode"]["enum"] if rest_codes.CODES[c].status == status
            ]
            assert schema["properties"]["error"]["enum"] == expected, name


class CheckedApi(Api):
    """The suite's Api whose every answer is validated against the spec."""

    def __init__(self, jp_fetch: Any, validator: SpecValidator, user: str | None = None) -> None:
        super().__init__(jp_fetch, user)
        self.validator = validator
        self.problems: list[str] = []

    async def request(self, method: str, *parts: str, **kw: Any) -> tuple[int, Any]:
        status, payload = await super().request(method, *parts, **kw)
        path = "/" + "/".join(p.strip("/") for p in parts if p.strip("/"))
        if parts and parts[-1].endswith("/"):
            path += "/"
        body = payload if isinstance(payload, str) else json.dumps(payload)
        content_type = self.last_headers.get("Content-Type", "")
        headers = dict(self.last_headers.get_all())
        self.problems += self.validator.check(method, path, status, content_type, body, headers)
        return status, payload


@pytest.fixture
def offline_token_config(offline_token_config):
    return {**offline_token_config, "max_pending_consents": MAX_PENDING}


@pytest.fixture
def checked(jp_fetch) -> CheckedApi:
    return CheckedApi(jp_fetch, SpecValidator())


async def test_the_server_serves_the_spec(checked, jp_base_url):
    status, served = await checked.get("openapi.json")
    assert status == 200
    assert [s["url"] for s in served["servers"]] == [jp_base_url]
    assert {**served, "servers": load_spec()["servers"]} == load_spec()
    status, refused = await checked.get("openapi.json", headers={"Authorization": "token wrong"})
    assert status == 403 and refused["error"] == rest_codes.FORBIDDEN
    assert not checked.problems, "\n".join(checked.problems)


async def test_the_rest_scenarios_answer_as_described(checked, idp, tasks):
    """The shared REST scenarios (every route, most error codes) validated against the spec."""
    problems = await run(ServerWorld(checked, idp))
    assert not problems, "\n".join(problems)
    assert not checked.problems, "\n".join(checked.problems)
    exercised = {(c.template, c.method) for c in checked.validator.checked}
    assert len(exercised) >= 14, exercised


def test_the_kernel_fake_answers_as_described():
    """kernel.testing's fake of this API (what users test against) runs the same scenarios and
    its answers validate against the spec too."""
    fake = FakeOfflineTokenAPI(max_pending_consents=MAX_PENDING)
    http = httpx.Client(
        base_url=fake.base_url + "api/offline-token/",
        headers={"Authorization": f"token {fake.server_token}"},
        transport=fake.transport(),
    )
    validator = SpecValidator()
    problems: list[str] = []

    class FakeWorld:
        async def request(
            self, method: str, path: str, *, raw: bytes | None, params: dict[str, str]
        ) -> tuple[int, Any]:
            answer = http.request(method, path, content=raw, params=params)
            content_type = answer.headers.get("Content-Type", "")
            problems.extend(
                validator.check(
                    method,
                    f"/api/offline-token/{path}",
                    answer.status_code,
                    content_type,
                    answer.content,
                    dict(answer.headers),
                )
            )
            if "json" in content_type and answer.content:
                return answer.status_code, answer.json()
            return answer.status_code, answer.text

        async def grant(self, consent_url: str) -> None:
            assert http.get(consent_url).status_code == 200

    with http:
        assert not asyncio.run(run(FakeWorld()))
    assert not problems, "\n".join(problems)
    assert len(validator.checked) > 50, "the scenarios' answers were not all checked"


async def test_more_flows_answer_as_described(checked, idp, tasks):
    """What the scenarios leave out: pages, the event stream, a deletion with a warning,
    refused credentials; then every described operation has been seen at least once."""
    api = checked
    first = await grant(api, idp, label="first")
    second = await grant(api, idp, label="second")  # the same user: shares the account
    status, task = await api.post("tasks", body={"name": "events", "persistent_token_id": first})
    assert status == 201, task
    link = {"persistent_token_id": first}
    assert (await api.post("tasks", task["id"], "link", body=link))[0] == 200
    assert (await api.post("tasks", task["id"], "execute"))[0] == 202
    assert (await api.get("tasks", task["id"]))[0] == 200
    status, minted = await api.post("tasks", task["id"], "worker-credentials")
    assert status == 201, minted
    worker = {"Authorization": f"OfflineTokenTask {minted['credential']}"}
    assert (await api.get("tasks", task["id"], headers=worker))[0] == 200
    assert (await api.get("tasks", params={"status": "running"}))[0] == 200
    status, done = await api.patch("tasks", task["id"], body={"status": "completed"})
    assert status == 200 and done["status"] == "completed", done
    status, stream = await api.get("tasks", task["id"], "events")
    assert status == 200 and "event: task" in stream, stream
    events = [json.loads(e["data"]) for e in parse_events(stream)]  # validated by CheckedApi
    assert events and events[-1]["status"] == "completed", events
    assert (await api.get("tasks", task["id"], "log"))[0] == 200
    assert (await api.post("tasks", task["id"], "cancel", raw=b"{}"))[0] == 409
    assert (await api.post("tasks", task["id"], "execute", raw=b'{"x": 1}'))[0] == 400
    assert (await api.delete("tasks", task["id"]))[0] == 204
    status, deleted = await api.delete("tokens", second)
    assert status == 200 and deleted["warning"], deleted
    assert (await api.get("tokens", first, "audit"))[0] == 200
    assert (await api.post("tokens", first, "refresh"))[0] == 200
    assert (await api.post("tokens", first, "refresh", raw=b"{}"))[0] == 429
    assert (await api.delete("tokens", first, "access-token"))[0] == 204
    assert (await api.get("health", params={"limit": "5"}))[0] == 200
    # credentials the server refuses
    bad_task = {"Authorization": "OfflineTokenTask not-a-credential"}
    assert (await api.post("tokens", first, "access-token", headers=bad_task))[0] == 403
    assert (await api.get("tokens", headers=bad_task))[0] == 403
    assert (await api.get("tokens", headers={"Authorization": "token wrong"}))[0] == 403
    # the pages
    assert (await api.request("GET", "offline-token/"))[0] == 200
    assert (await api.request("GET", "offline-token", "callback"))[0] == 400
    unknown = {"state": "never-issued", "code": "x"}
    assert (await api.request("GET", "offline-token", "callback", params=unknown))[0] == 400
    assert (await api.get("openapi.json"))[0] == 200
    assert not api.problems, "\n".join(api.problems)
    seen = {(c.template, c.method) for c in api.validator.checked}
    unseen = _operations(load_spec()) - seen
    assert sorted(unseen) == [], "operations no flow of this module exercised"


def test_the_validator_sees_drift():
    """The helper above is not a rubber stamp: a missing key, an undescribed status, a wrong
    media type and an unknown error code are each reported."""
    validator = SpecValidator()
    path = "/api/offline-token/tasks/abc/log"
    assert validator.check("GET", path, 200, "application/json", '{"lines": []}') == []
    assert validator.check("GET", path, 200, "application/json", "{}")
    assert validator.check("GET", path, 418, "application/json", '{"lines": []}')
    assert validator.check("GET", path, 200, "text/html", "<p>")
    assert validator.check("GET", path, 404, "application/json", '{"error": "x", "message": "m"}')
    conflict = '{"error": "conflict", "message": "m"}'  # a real code, at the wrong status
    assert validator.check("GET", path, 404, "application/json", conflict)
    assert validator.check("GET", "/api/offline-token/nowhere", 404, "application/json", "{}")
    events = "/api/offline-token/tasks/abc/events"
    sse = "text/event-stream; charset=UTF-8"
    assert validator.check(
        "GET", events, 200, sse, ': keepalive\n\nevent: task\ndata: {"id": 1}\n\n'
    )
    assert validator.check("GET", events, 200, sse, "event: other\ndata: x\n\n")
    busy = '{"error": "provider_unavailable", "message": "m"}'
    access = "/api/offline-token/tokens/abc/access-token"
    assert (
        validator.check("POST", access, 503, "application/json", busy, {"Retry-After": "7"}) == []
    )
    assert validator.check("POST", access, 503, "application/json", busy, {"Retry-After": "soon"})


SECRET_TO_FILE = """
import os, pathlib, sys, time
print("started", flush=True)
secret = pathlib.Path(sys.argv[1])
secret.touch(mode=0o600)
secret.write_text(os.environ["JUPYTER_OFFLINE_TOKEN_TASK_SECRET"])
time.sleep(120)
"""


async def _until(predicate: Any, what: str, limit: float = 40.0) -> Any:
    """Poll until truthy; a hang guard, not a timing assertion."""
    deadline = time.monotonic() + limit
    while not (value := await predicate()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.05)
    return value


async def test_a_task_credential_gets_described_answers(checked, idp, tasks, tmp_path):
    """The TaskCredential scheme: a running command task's own credential, where it reaches
    (its token's access token, its task) and where it does not (403)."""
    api = checked
    token_id = await grant(api, idp, label="task credential")
    other = await grant(api, idp, label="not the task's")
    secret_file = tmp_path / "secret"
    command = [sys.executable, "-c", SECRET_TO_FILE, str(secret_file)]
    body = {"name": "cred", "kind": "command", "command": command, "persistent_token_id": token_id}
    status, task = await api.post("tasks", body=body)
    assert status == 201, task
    assert (await api.post("tasks", task["id"], "execute"))[0] == 202

    async def secret() -> str:
        return secret_file.read_text() if secret_file.exists() else ""

    credential = {"Authorization": f"OfflineTokenTask {await _until(secret, 'the secret')}"}

    async def logged() -> bool:
        return bool((await api.get("tasks", task["id"], "log"))[1]["lines"])

    await _until(logged, "the task's first output line")
    status, access = await api.post("tokens", token_id, "access-token", headers=credential)
    assert status == 200 and access["access_token"], status
    assert (await api.get("tasks", task["id"], headers=credential))[0] == 200
    report = {"progress": 5, "message": "from the task"}
    assert (await api.patch("tasks", task["id"], body=report, headers=credential))[0] == 200
    assert (await api.post("tokens", other, "access-token", headers=credential))[0] == 403
    assert (await api.get("tokens", headers=credential))[0] == 403
    assert (await api.delete("tasks", task["id"], headers=credential))[0] == 403
    status, cancelled = await api.post("tasks", task["id"], "cancel")
    assert status == 200 and cancelled["status"] == "cancelled", cancelled

    async def ended() -> bool:
        return not task_processes(task["id"])

    await _until(ended, "the task's process to end")
    assert (await api.get("tasks", task["id"], headers=credential))[0] == 403
    assert not api.problems, "\n".join(api.problems)


async def test_provider_faults_answer_as_described(checked, idp, offline_app):
    """503 provider_unavailable with its Retry-After, from the access-token route and from a
    deletion whose revocation fails (the faults the real provider cannot make on demand)."""
    token_id = await grant(checked, idp, label="faults")
    fault = FaultInjector()
    broker = offline_app.services.broker
    original, broker.provider = (
        broker.provider,
        ProviderClient(
            idp.issuer, idp.client_id, idp.client_secret, http_timeout=1.0, transport=fault
        ),
    )
    try:
        broker._cache.clear()  # the next request must reach the provider
        fault.arm("503")
        status, err = await checked.post("tokens", token_id, "access-token")
        assert status == 503 and err["error"] == rest_codes.PROVIDER_UNAVAILABLE, err
        assert checked.last_headers.get("Retry-After"), "Retry-After missing"
        # A forced refresh while the provider fails: the scheduler's retry is the next attempt.
        status, err = await checked.post("tokens", token_id, "refresh")
        assert status == 503 and err["error"] == rest_codes.PROVIDER_UNAVAILABLE, err
        assert checked.last_headers.get("Retry-After"), "Retry-After missing"
        fault.arm("refuse", path_suffix="/revocation")
        status, err = await checked.delete("tokens", token_id)
        assert status == 503 and err["error"] == rest_codes.PROVIDER_UNAVAILABLE, err
        assert (await checked.get("tokens", token_id))[1]["status"] == "active"
    finally:
        await broker.provider.aclose()
        broker.provider = original
    assert not checked.problems, "\n".join(checked.problems)


class TestNotConfigured:
    """Without issuer and client_id every other route answers 503 not_configured (described);
    the description is still served: it depends on no setting."""

    @pytest.fixture
    def offline_token_config(self, tmp_path):
        return {"vault_path": str(tmp_path / "v" / "vault.db")}

    async def test_the_spec_is_served_and_503_is_described(self, checked):
        status, served = await checked.get("openapi.json")
        assert status == 200 and served["paths"] == load_spec()["paths"]
        status, err = await checked.post("consents", body={})
        assert status == 503 and err["error"] == rest_codes.NOT_CONFIGURED
        assert not checked.problems, "\n".join(checked.problems)
