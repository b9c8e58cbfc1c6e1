"""schemathesis against a running server, from the served OpenAPI description: a bounded number
of generated requests per operation (valid ones, invalid ones from negative generation, and valid
ones aimed at a granted token and its task), then short sequences along the description's links
(a consent and its token, a task and its routes). Every answer: 0 server errors, conforming to the
description (status, media type, schema, invalid input rejected), and for a rejection (4xx) the
vault's state (tokens and tasks as the API lists them) unchanged.

The server is the suite's in-process Jupyter server on a real port; schemathesis calls it with
``requests`` from a worker thread while the test's event loop serves. Generation is derandomized,
so a failure reproduces; failures are collected (not raised) so hypothesis does not shrink them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.errors import FlakyStrategyDefinition, Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from server_fixtures import grant

from jupyter_offline_token.tasks.models import PROCESS_KINDS
from jupyter_offline_token.tasks.runners import LocalTaskRunner, TaskLaunch, TaskRun

pytestmark = pytest.mark.timeout(180)

EXAMPLES = 10  # per operation and generation mode
SEQUENCES, SEQUENCE_STEPS = 15, 6  # stateful: chains along the spec's links
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Never aimed at the seeded entries: deleting them would leave the rest nothing to work on, and
# the event stream of a task that has not ended stays open.
NOT_SEEDED = {
    ("DELETE", "/api/offline-token/tokens/{token_id}"),
    ("DELETE", "/api/offline-token/tasks/{task_id}"),
    ("GET", "/api/offline-token/tasks/{task_id}/events"),
}

ACCESS_TOKEN = re.compile(r'"access_token":\s*"[^"]*"?')
TOKEN_STATE = ("persistent_token_id", "status", "label", "task_id", "scopes", "keep_warm", "tasks")
TASK_STATE = (
    "id",
    "name",
    "description",
    "kind",
    "status",
    "persistent_token_id",
    "progress",
    "message",
    "result",
    "error",
    "command",
    "notebook",
    "parameters",
)


@dataclasses.dataclass
class Outcome:
    cases: int = 0
    rejected: int = 0
    accepted: int = 0
    in_sequences: int = 0
    sequences_cut_short: bool = False
    followed_links: int = 0  # 2xx answers in sequences on an entry a previous step created
    unsatisfiable: list[str] = dataclasses.field(default_factory=list)  # nothing to negate
    problems: list[str] = dataclasses.field(default_factory=list)


class Vault:
    """The user's tokens and tasks as the API lists them (the fields a request may change)."""

    def __init__(self, session: requests.Session, api_url: str) -> None:
        self.session = session
        self.api_url = api_url

    def snapshot(self) -> dict[str, Any]:
        tokens = self._list("tokens")
        tasks = self._list("tasks")
        return {
            "tokens": {t["persistent_token_id"]: [t[k] for k in TOKEN_STATE] for t in tokens},
            "tasks": {t["id"]: [t[k] for k in TASK_STATE] for t in tasks},
        }

    def _list(self, what: str) -> list[dict[str, Any]]:
        answer = self.session.get(f"{self.api_url}{what}", params={"limit": "1000"}, timeout=30)
        answer.raise_for_status()
        page = answer.json()
        assert page["next_cursor"] is None, "more than one page: raise the limit"
        return list(page[what])


def _redact(text: str) -> str:
    """Failure messages never show an access token the server answered."""
    return ACCESS_TOKEN.sub('"access_token": "<redacted>"', text)


def _describe(case: Any, status: int, text: str) -> str:
    request = f"{case.method} {case.formatted_path} query={case.query} body={case.body!r:.200}"
    return f"{request}: {status} {_redact(text)[:300]}"


class Fuzzer:
    """Calls the server with generated cases and judges every answer: schemathesis's checks,
    and for a 4xx the vault's state before and after (it must not have changed)."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.session.headers.update(headers)
        self.vault = Vault(self.session, f"{base_url}api/offline-token/")
        self.outcome = Outcome()
        self.state = self.vault.snapshot()

    def call_kwargs(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "session": self.session, "timeout": 30}

    def run_case(self, case: Any) -> None:
        self.judge(case, case.call(**self.call_kwargs()))

    def judge(self, case: Any, response: Any) -> None:
        outcome = self.outcome
        outcome.cases += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (Failure, FailureGroup) as exc:
            detail = _redact(str(exc).strip())  # schemathesis quotes the body it judged
            outcome.problems.append(
                f"{_describe(case, response.status_code, response.text)}\n    {detail[:800]}"
            )
        after = self.vault.snapshot()
        if 400 <= response.status_code < 500:
            outcome.rejected += 1
            if after != self.state:
                outcome.problems.append(
                    f"state changed by a rejected request: "
                    f"{_describe(case, response.status_code, response.text)}"
                )
        else:
            outcome.accepted += 1
        self.state = after

    def each_operation(self, schema: Any, seeds: dict[str, str]) -> None:
        """Every operation: valid and invalid cases, and valid ones on the seeded entries."""
        for result in schema.get_all_operations():
            operation = result.ok()
            positive, negative = (
                schemathesis.GenerationMode.POSITIVE,
                schemathesis.GenerationMode.NEGATIVE,
            )
            strategies = [
                operation.as_strategy(generation_mode=positive),
                operation.as_strategy(generation_mode=negative),
            ]
            names = {p.name for p in operation.path_parameters}
            if names and (operation.method.upper(), operation.path) not in NOT_SEEDED:
                fixed = {n: seeds[n] for n in names}
                strategies.append(
                    operation.as_strategy(generation_mode=positive, path_parameters=fixed)
                )
            for strategy in strategies:
                try:
                    _run_examples(strategy, self.run_case)
                except Unsatisfiable:
                    self.outcome.unsatisfiable.append(
                        f"{operation.method.upper()} {operation.path}"
                    )

    def sequences(self, schema: Any) -> None:
        """Stateful: chains along the spec's links (a consent, then its token; a task, then
        its link, execute, report, cancel, delete), every answer judged the same way."""
        fuzzer = self

        # A created task's event stream stays open until the task ends: not in a sequence.
        machine = schema.exclude(operation_id="taskEvents").as_state_machine()

        class Sequences(machine):  # type: ignore[misc]
            def get_call_kwargs(self, case: Any) -> dict[str, Any]:
                return fuzzer.call_kwargs()

            def validate_response(self, response: Any, case: Any, *args: Any, **kw: Any) -> None:
                fuzzer.judge(case, response)
                if "{" in case.path and response.status_code < 300:
                    fuzzer.outcome.followed_links += 1

        try:
            Sequences.run(
                settings=settings(
                    max_examples=SEQUENCES,
                    stateful_step_count=SEQUENCE_STEPS,
                    database=None,
                    deadline=None,
                    derandomize=True,
                    phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
            )
        except FlakyStrategyDefinition:
            # Hypothesis met a sequence prefix again and the server, whose state has moved on,
            # offered other next steps: a limit of stateful generation against a live server,
            # not a finding. The answers judged so far stand.
            self.outcome.sequences_cut_short = True


def fuzz(schema: Any, base_url: str, headers: dict[str, str], seeds: dict[str, str]) -> Outcome:
    """Run every case in this (worker) thread; return what happened."""
    fuzzer = Fuzzer(base_url, headers)
    fuzzer.each_operation(schema, seeds)
    before = fuzzer.outcome.cases
    fuzzer.sequences(schema)
    fuzzer.outcome.in_sequences = fuzzer.outcome.cases - before
    return fuzzer.outcome


def _run_examples(strategy: Any, run_case: Any) -> None:
    @settings(
        max_examples=EXAMPLES,
        database=None,
        deadline=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def examples(case: Any) -> None:
        run_case(case)

    examples()


class NoProcessRunner(LocalTaskRunner):
    """Generated command and notebook tasks start no process (their argv is random text, and a
    sequence may link one to the seeded active token): their start fails with a reason, as a
    real start error does. Demo tasks run as usual."""

    async def start(self, launch: TaskLaunch) -> TaskRun:
        if launch.task.kind in PROCESS_KINDS:
            raise OSError("the fuzz test starts no process")
        return await super().start(launch)


@pytest.fixture
def offline_token_config(offline_token_config):
    # No cap on pending consents: answers must not depend on how many cases ran before (a
    # sequence replayed by hypothesis has to meet the same answers).
    return {
        **offline_token_config,
        "task_runner_class": NoProcessRunner,
        "max_pending_consents": 100_000,
    }


@pytest.fixture(autouse=True)
def hypothesis_home(tmp_path):
    """Hypothesis's caches in the test's directory, not in the worktree."""
    set_hypothesis_home_dir(tmp_path / "hypothesis")
    yield
    set_hypothesis_home_dir(None)


async def test_schemathesis_finds_no_server_error_and_no_change_by_a_rejection(
    api, idp, tasks, jp_http_port, jp_base_url, jp_auth_header
):
    assert isinstance(tasks.runner, NoProcessRunner)
    active = await grant(api, idp, label="fuzz seed")
    status, task = await api.post("tasks", body={"name": "seed", "persistent_token_id": active})
    assert status == 201, task
    status, served = await api.get("openapi.json")
    assert status == 200
    schema = schemathesis.openapi.from_dict(served)
    base_url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}"
    seeds = {"token_id": active, "task_id": task["id"]}
    outcome = await asyncio.to_thread(fuzz, schema, base_url, dict(jp_auth_header), seeds)
    print(json.dumps({k: v for k, v in dataclasses.asdict(outcome).items() if k != "problems"}))
    assert not outcome.problems, f"{len(outcome.problems)} problems:\n" + "\n".join(
        outcome.problems[:15]
    )
    # Not vacuous: many cases ran, and both kinds of answers were seen.
    assert outcome.cases >= 200 and outcome.rejected >= 100 and outcome.accepted >= 30, outcome
    assert outcome.followed_links, "no sequence reached an entry an earlier step created"
