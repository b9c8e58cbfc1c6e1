"""Static checks on the dashboard page: shipped, self-contained, testable, valid JavaScript.

No server and no browser here; the Playwright tests drive the real page later.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jupyter_offline_token"
TEMPLATE = PACKAGE / "templates" / "dashboard.html"
SCRIPT = PACKAGE / "static" / "dashboard.js"
STYLESHEET = PACKAGE / "static" / "dashboard.css"

# Hooks the browser tests rely on; renaming one breaks them, so it must be deliberate.
TEST_IDS = [
    "request-token",
    "token-row",
    "token-status",
    "refresh-token",
    "revoke",
    "task-form",
    "task-name",
    "task-kind",
    "create-task",
    "task-row",
    "task-status",
    "task-progress",
    "execute",
    "cancel",
    "retry",
    "delete",
    "link-select",
    "link",
    "health-banner",
    "inline-error",
]

EXTERNAL_URL = re.compile(r"https?://|(?<![:\w])//cdn", re.IGNORECASE)


def _page_sources() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in (TEMPLATE, SCRIPT, STYLESHEET))


def test_page_files_are_shipped_inside_the_package() -> None:
    for path in (TEMPLATE, SCRIPT, STYLESHEET):
        assert path.is_file(), f"missing {path.relative_to(PACKAGE.parent)}"
        assert path.stat().st_size > 0


@pytest.mark.parametrize("path", [SCRIPT, STYLESHEET, TEMPLATE], ids=lambda p: p.name)
def test_no_external_urls(path: Path) -> None:
    hits = [
        f"{number}: {line.strip()}"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if EXTERNAL_URL.search(line)
    ]
    assert hits == [], f"{path.name} references external URLs: {hits}"


def test_external_url_pattern_catches_cdn_references() -> None:
    """The guard above is only worth something if it fires on the usual offenders."""
    for line in (
        '<script src="https://cdn.example.org/x.js">',
        "import('http://example.org/m.js')",
        '<link href="//cdn.jsdelivr.net/npm/x.css">',
    ):
        assert EXTERNAL_URL.search(line), line
    assert not EXTERNAL_URL.search("const apiRoot = baseUrl + 'api/offline-token/';")


@pytest.mark.parametrize("test_id", TEST_IDS)
def test_data_testid_present(test_id: str) -> None:
    sources = _page_sources()
    assert re.search(rf"""["']?data-testid["']?\s*[:=]\s*["']{re.escape(test_id)}["']""", sources)


def test_template_reads_base_url_and_xsrf_from_the_handler() -> None:
    html = TEMPLATE.read_text(encoding="utf-8")
    assert 'data-base-url="{{ base_url }}"' in html
    assert 'data-xsrf-token="{{ xsrf_token }}"' in html
    # CSP-friendly: no inline script or style, assets come from the static handler.
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) is None
    assert "<style" not in html
    assert 'src="{{ js_url }}"' in html


def test_script_never_injects_html() -> None:
    script = SCRIPT.read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, f"dashboard.js uses {sink}"


def test_script_sends_xsrf_header_from_cookie() -> None:
    script = SCRIPT.read_text(encoding="utf-8")
    assert '"X-XSRFToken"' in script
    assert "_xsrf=" in script


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_script_parses_with_node() -> None:
    node = shutil.which("node")
    assert node is not None
    result = subprocess.run(
        [node, "--check", str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_dashboard_template_renders_escaped() -> None:
    """The handler's template escapes hostile values in text and attributes."""
    from jupyter_offline_token.handlers.dashboard import _dashboard_template

    html = _dashboard_template().render(
        page_title="<b>T</b>",
        base_url='/user/x"onload="alert(1)/',
        css_url="/static/jupyter_offline_token/dashboard.css",
        js_url="/static/jupyter_offline_token/dashboard.js",
        xsrf_token="2|ab|cd|1",
        theme="dark",
    )
    assert "<b>T</b>" not in html
    assert "&lt;b&gt;T&lt;/b&gt;" in html
    assert 'data-base-url="/user/x&#34;onload=&#34;alert(1)/"' in html
    assert '<html lang="en" data-theme="dark">' in html
