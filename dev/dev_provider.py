"""Run the development OpenID provider (dev/idp/server.mjs) for tests and drive its HTML forms.

Only ever talks to the provider's own 127.0.0.1 port; never logs tokens or secrets.
"""

from __future__ import annotations

import fcntl
import os
import queue
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import parse_qs, quote, urlencode, urljoin, urlsplit

import httpx

IDP_DIR = Path(__file__).resolve().parent / "idp"
DEFAULT_SCOPE = "openid profile email offline_access"
_MAX_FORM_STEPS = 20


class DevProviderError(RuntimeError):
    """The dev provider could not be installed, started or driven."""


class _Form:
    def __init__(self, attrs: dict[str, str]) -> None:
        self.id = attrs.get("id", "")
        self.action = attrs.get("action", "")
        self.method = attrs.get("method", "get").lower()
        self.fields: dict[str, str] = {}
        self.buttons: list[tuple[str, str]] = []


class _FormParser(HTMLParser):
    """Collects forms (named inputs, submit buttons) and the text of the element with id=error."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []
        self.error_texts: list[str] = []
        self._form: _Form | None = None
        self._error_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        if self._error_depth or values.get("id") == "error":
            self._error_depth += 1
        if tag == "form":
            self._form = _Form(values)
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and values.get("name"):
            self._form.fields[values["name"]] = values.get("value", "")
        elif tag == "button" and self._form is not None and values.get("name"):
            self._form.buttons.append((values["name"], values.get("value", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        if self._error_depth:
            self._error_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._error_depth and data.strip():
            self.error_texts.append(data.strip())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _same_endpoint(url: str, other: str) -> bool:
    """True when both URLs have the same scheme, host, port and path (query ignored)."""
    a, b = urlsplit(url), urlsplit(other)
    return (a.scheme, a.hostname, a.port, a.path) == (b.scheme, b.hostname, b.port, b.path)


def ensure_node_modules() -> None:
    """Run `npm ci` in dev/idp once when oidc-provider is not installed (locked across workers)."""
    marker = IDP_DIR / "node_modules" / "oidc-provider" / "package.json"
    if marker.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise DevProviderError("npm is not on PATH; install Node.js 20+ to run the dev provider")
    lock_path = Path(tempfile.gettempdir()) / "jupyter-offline-token-dev-idp-npm.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return
        try:
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=IDP_DIR,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise DevProviderError(f"`npm ci` in {IDP_DIR} took over 10 minutes") from exc
        if result.returncode != 0 or not marker.exists():
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise DevProviderError(
                f"`npm ci` in {IDP_DIR} failed (exit {result.returncode}):\n{tail}"
            )


class DevProvider:
    """A dev/idp/server.mjs subprocess on 127.0.0.1 plus helpers to drive it from tests."""

    def __init__(
        self,
        *,
        access_token_ttl: int = 300,
        port: int | None = None,
        client_id: str = "jupyter",
        client_secret: str | None = None,
    ) -> None:
        if not isinstance(access_token_ttl, int) or access_token_ttl < 1:
            raise ValueError("access_token_ttl must be a positive number of seconds")
        self.access_token_ttl = access_token_ttl
        self._requested_port = port
        self.port = port or 0
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(32)
        self.public_client_id = f"{client_id}-public"
        self.metadata: dict[str, Any] = {}
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self._http: httpx.Client | None = None

    def __repr__(self) -> str:
        state = "running" if self._process is not None else "stopped"
        return f"<DevProvider {self.issuer} client_id={self.client_id!r} {state}>"

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # lifecycle

    def start(self, timeout: float = 30) -> None:
        """Start the provider and wait until it serves its discovery document."""
        if self._process is not None:
            raise DevProviderError("the dev provider is already running")
        node = shutil.which("node")
        if node is None:
            raise DevProviderError("node is not on PATH; install Node.js 20+ to run the provider")
        ensure_node_modules()
        attempts = 1 if self._requested_port else 3
        for attempt in range(attempts):
            self.port = self._requested_port or _free_port()
            try:
                self._spawn(node, timeout)
                return
            except DevProviderError:
                self.stop()
                if attempt == attempts - 1:
                    raise

    def _spawn(self, node: str, timeout: float) -> None:
        env = {
            **os.environ,
            "IDP_PORT": str(self.port),
            "IDP_ACCESS_TOKEN_TTL": str(self.access_token_ttl),
            "IDP_CLIENT_ID": self.client_id,
            "IDP_CLIENT_SECRET": self.client_secret,
            "IDP_PUBLIC_CLIENT_ID": self.public_client_id,
        }
        self._stderr = tempfile.TemporaryFile("w+", encoding="utf-8")
        self._process = subprocess.Popen(
            [node, "server.mjs"],
            cwd=IDP_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(
            target=self._drain_stdout, args=(self._process.stdout, lines), daemon=True
        ).start()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DevProviderError(self._failure("did not print READY in time"))
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise DevProviderError(self._failure("exited before it was ready"))
            if line.strip() == f"READY {self.issuer}":
                break
        self._http = httpx.Client(base_url=self.issuer, timeout=10, follow_redirects=False)
        response = self._http.get("/.well-known/openid-configuration")
        if response.status_code != 200 or response.json().get("issuer") != self.issuer:
            raise DevProviderError(self._failure("served no valid discovery document"))
        self.metadata = response.json()

    @staticmethod
    def _drain_stdout(stream: IO[str] | None, lines: queue.Queue[str | None]) -> None:
        if stream is not None:
            for line in stream:
                lines.put(line)
        lines.put(None)

    def _failure(self, what: str) -> str:
        output = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            output = "\n".join(self._stderr.read().splitlines()[-20:])
        return f"dev provider on port {self.port} {what}; stderr:\n{output}"

    def stop(self) -> None:
        """Terminate the provider (SIGTERM, then SIGKILL after 10 s) and free its resources."""
        if self._http is not None:
            self._http.close()
            self._http = None
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> DevProvider:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def http(self) -> httpx.Client:
        """An httpx client bound to the provider's base URL (no redirects followed)."""
        if self._http is None:
            raise DevProviderError("the dev provider is not running; call start() first")
        return self._http

    def endpoint(self, name: str) -> str:
        """An endpoint URL from discovery, e.g. endpoint("token") for token_endpoint."""
        value = self.metadata.get(f"{name}_endpoint") or self.metadata.get(name)
        if not isinstance(value, str):
            raise DevProviderError(f"the provider advertises no {name!r} endpoint")
        return value

    # dev endpoints

    def stats(self) -> dict[str, int]:
        response = self.http.get("/__dev/stats")
        response.raise_for_status()
        return {key: int(value) for key, value in response.json().items()}

    def reset_stats(self) -> None:
        self.http.post("/__dev/stats/reset").raise_for_status()

    def revoke_account_grants(self, sub: str) -> None:
        """Destroy every grant and token of account `sub`, as an admin revoking sessions would."""
        self.http.post(f"/__dev/accounts/{quote(sub, safe='')}/revoke-grants").raise_for_status()

    # OAuth helpers

    def authorization_url(
        self,
        *,
        redirect_uri: str,
        state: str,
        code_challenge: str | None,
        client_id: str | None = None,
        scope: str = DEFAULT_SCOPE,
        prompt: str | None = "consent",
        **extra: str,
    ) -> str:
        """An authorization request URL (code flow, PKCE S256); offline_access needs consent.

        code_challenge=None leaves PKCE out, to show that the provider requires it.
        """
        params = {
            "response_type": "code",
            "client_id": client_id or self.client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state,
        }
        if code_challenge is not None:
            params.update(code_challenge=code_challenge, code_challenge_method="S256")
        if prompt:
            params["prompt"] = prompt
        params.update(extra)
        return f"{self.endpoint('authorization')}?{urlencode(params)}"

    def complete_consent(
        self,
        consent_url: str,
        *,
        username: str = "alice",
        password: str | None = None,
        decision: str = "allow",
    ) -> str:
        """Follow the provider's redirects and HTML forms with a fresh httpx.Client (cookie jar),
        log in and allow/deny, and return the final redirect Location that points at the
        client's redirect_uri (with code&state, or error=access_denied&state) WITHOUT requesting it.
        """
        if decision not in ("allow", "deny"):
            raise ValueError("decision must be 'allow' or 'deny'")
        if not _same_endpoint(consent_url, self.endpoint("authorization")):
            raise ValueError("consent_url is not this provider's authorization endpoint")
        redirect_uris = parse_qs(urlsplit(consent_url).query).get("redirect_uri", [])
        if len(redirect_uris) != 1:
            raise ValueError("consent_url must carry exactly one redirect_uri")
        redirect_uri = redirect_uris[0]
        password = username if password is None else password

        with httpx.Client(timeout=10, follow_redirects=False) as browser:
            response = browser.get(consent_url)
            for _ in range(_MAX_FORM_STEPS):
                if response.is_redirect:
                    location = urljoin(str(response.url), response.headers["location"])
                    if _same_endpoint(location, redirect_uri):
                        return location
                    if not location.startswith(self.issuer + "/"):
                        raise DevProviderError("the provider redirected to an unexpected origin")
                    response = browser.get(location)
                    continue
                response = self._submit_form(browser, response, username, password, decision)
        raise DevProviderError("the consent flow did not reach the redirect_uri")

    def _submit_form(
        self,
        browser: httpx.Client,
        response: httpx.Response,
        username: str,
        password: str,
        decision: str,
    ) -> httpx.Response:
        parser = _FormParser()
        parser.feed(response.text)
        forms = {form.id: form for form in parser.forms}
        error = " ".join(parser.error_texts)
        if "login" in forms:
            if error:
                raise DevProviderError(f"login as {username!r} failed: {error}")
            form, data = forms["login"], {"login": username, "password": password}
        elif "consent" in forms:
            form, data = forms["consent"], {"decision": decision}
        else:
            detail = error or f"HTTP {response.status_code}"
            raise DevProviderError(f"the provider showed no login or consent form: {detail}")
        action = urljoin(str(response.url), form.action)
        if not action.startswith(self.issuer + "/"):
            raise DevProviderError("a provider form posts to an unexpected origin")
        return browser.post(action, data={**form.fields, **data})

    def userinfo(self, access_token: str) -> httpx.Response:
        """GET the userinfo endpoint with a bearer token; the caller checks the status."""
        return self.http.get(
            self.endpoint("userinfo"), headers={"Authorization": f"Bearer {access_token}"}
        )

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 introspection as the confidential client (client_secret_basic)."""
        response = self.http.post(
            self.endpoint("introspection"),
            data={"token": token},
            auth=(self.client_id, self.client_secret),
        )
        response.raise_for_status()
        result = response.json()
        if not isinstance(result, dict):
            raise DevProviderError("introspection answered with no JSON object")
        return result
