"""A small validator of real answers against ``jupyter_offline_token/openapi.json``: the
operation for a method and path, the response for a status, its media type, and the body
against the schema (JSON Schema 2020-12, as OpenAPI 3.1 defines it, with jsonschema).

Used by ``test_openapi.py`` on the answers of real flows; it knows nothing of the server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from jupyter_offline_token.handlers.openapi import load_spec

SPEC_URI = "urn:jupyter-offline-token:openapi"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def parse_events(text: str) -> list[dict[str, str]]:
    """Server-sent events: blocks of ``field: value`` lines; ``:`` lines are comments."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            event[name] = f"{event[name]}\n{value}" if name in event else value
        if event:
            events.append(event)
    return events


@dataclass
class Checked:
    """What one answer was checked against (for a test to see that it was)."""

    template: str
    method: str
    status: int
    media_type: str | None


class SpecValidator:
    def __init__(self, spec: dict[str, Any] | None = None) -> None:
        self.spec = spec if spec is not None else load_spec()
        self.registry: Registry[Any] = Registry().with_resource(
            SPEC_URI, DRAFT202012.create_resource(self.spec)
        )
        # Literal paths before templated ones, so ".../openapi.json" is never "{token_id}".
        self.templates = sorted(self.spec["paths"], key=lambda t: (t.count("{"), t))
        self.checked: list[Checked] = []

    def template_for(self, path: str) -> str | None:
        for template in self.templates:
            pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
            if re.fullmatch(pattern, path):
                return template
        return None

    def check(
        self,
        method: str,
        path: str,
        status: int,
        content_type: str,
        body: bytes | str,
        headers: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Problems with one answer (an empty list: it conforms). ``path`` is relative to the
        server's base_url, starting with ``/``; the described ``headers`` that the answer has
        are checked too."""
        method = method.lower()
        where = f"{method.upper()} {path} -> {status}"
        template = self.template_for(path)
        if template is None:
            return [f"{where}: no path of the spec matches"]
        item = self.spec["paths"][template]
        if method not in item:
            # Any route answers a method it does not take with 405 method_not_allowed.
            if status != 405:
                return [f"{where}: {method} is not described for {template}"]
            return self._validate_json(where, body, _pointer("components", "schemas", "Error"))
        pointer = _pointer("paths", template, method, "responses", str(status))
        response = item[method]["responses"].get(str(status))
        if response is None:
            return [f"{where}: status {status} is not described for {method.upper()} {template}"]
        if "$ref" in response:
            pointer = response["$ref"][1:]
            response = self._resolve(pointer)
        problems = self._check_headers(where, response, headers or {})
        content = response.get("content")
        media_type = content_type.split(";")[0].strip().lower() or None
        self.checked.append(Checked(template, method, status, media_type if content else None))
        if not content:
            text = body.decode() if isinstance(body, bytes) else body
            return problems + (
                [f"{where}: a body where none is described: {text[:200]!r}"] if text else []
            )
        if media_type not in content:
            return [
                *problems,
                f"{where}: content type {content_type!r}, described: {sorted(content)}",
            ]
        schema_pointer = pointer + _pointer("content", media_type, "schema")
        if media_type == "application/json":
            return problems + self._validate_json(where, body, schema_pointer)
        if media_type == "text/event-stream":
            return problems + self._validate_events(where, body, schema_pointer)
        return problems

    def _validate_events(self, where: str, body: bytes | str, schema_pointer: str) -> list[str]:
        """Each server-sent event as ``{"event", "data", ...}`` against the schema, and its
        data against the schema's ``contentSchema`` when the data is JSON."""
        text = body.decode() if isinstance(body, bytes) else body
        schema = self._resolve(schema_pointer)
        if "$ref" in schema:
            schema_pointer = schema["$ref"][1:]
        data_pointer = schema_pointer + _pointer("properties", "data", "contentSchema")
        problems = []
        for n, event in enumerate(parse_events(text)):
            problems += self.validate(event, schema_pointer, f"{where} event {n}")
            try:
                data = json.loads(event.get("data", ""))
            except ValueError:
                continue
            problems += self.validate(data, data_pointer, f"{where} event {n} data")
        return problems

    def _check_headers(
        self, where: str, response: dict[str, Any], headers: Mapping[str, str]
    ) -> list[str]:
        problems = []
        for name, header in response.get("headers", {}).items():
            if "$ref" in header:
                header = self._resolve(header["$ref"][1:])
            value = headers.get(name)
            if value is None:
                if header.get("required"):
                    problems.append(f"{where}: the required header {name} is missing")
                continue
            validator = Draft202012Validator(header["schema"], format_checker=None)
            problems += [
                f"{where}: header {name}: {e.message}" for e in validator.iter_errors(value)
            ]
        return problems

    def _resolve(self, pointer: str) -> Any:
        node: Any = self.spec
        for part in pointer.strip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def _validate_json(self, where: str, body: bytes | str, schema_pointer: str) -> list[str]:
        try:
            payload = json.loads(body)
        except ValueError:
            return [f"{where}: the body is not JSON: {body[:200]!r}"]
        return self.validate(payload, schema_pointer, where)

    def validate(self, payload: Any, schema_pointer: str, where: str = "") -> list[str]:
        """Problems of ``payload`` against the schema at ``schema_pointer`` in the spec."""
        validator = Draft202012Validator(
            {"$ref": f"{SPEC_URI}#{schema_pointer}"},
            registry=self.registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        return [
            f"{where}: {'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message[:300]}"
            for e in validator.iter_errors(payload)
        ]
