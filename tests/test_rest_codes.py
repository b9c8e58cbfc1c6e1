"""rest_codes.py is the one list of the REST API's error codes: the server names each by its
constant (no literal), the kernel side maps each to a real class, and the module stays importable
without the server."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import httpx

from jupyter_offline_token import rest_codes
from jupyter_offline_token.consent import ConsentFailure
from jupyter_offline_token.kernel import errors as kernel_errors

PACKAGE = Path(rest_codes.__file__).parent


def _server_modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "kernel" not in p.relative_to(PACKAGE).parts]


def _literal_codes(path: Path) -> list[tuple[int, str]]:
    """String literals the module passes as ``code=...`` or sets as a class's ``code``,
    including either branch of a conditional (``code=x if y else "z"``)."""
    found: list[tuple[int, str]] = []

    def strings(node: ast.AST) -> list[ast.Constant]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node]
        if isinstance(node, ast.IfExp):
            return strings(node.body) + strings(node.orelse)
        return []

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        values: list[ast.AST] = []
        if isinstance(node, ast.keyword) and node.arg == "code":
            values.append(node.value)
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                target = None
                if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                    target, value = stmt.targets[0], stmt.value
                elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                    target, value = stmt.target, stmt.value
                if isinstance(target, ast.Name) and target.id == "code":
                    values.append(value)
        for value in values:
            found += [(c.lineno, c.value) for c in strings(value)]
    return found


def test_the_server_names_every_code_by_its_constant():
    """No ``code="..."`` literal anywhere on the server, listed or not: a code is spelled once,
    in rest_codes, so a rename cannot miss a site and a typo cannot pass unnoticed."""
    literals = [
        f"{path.relative_to(PACKAGE)}:{line}: {code!r}"
        for path in _server_modules()
        for line, code in _literal_codes(path)
    ]
    assert not literals, "use the rest_codes constant instead of:\n" + "\n".join(literals)


def test_every_consent_failure_is_a_listed_code():
    """The callback page's codes come from ConsentFailure's values, not from a ``code=``."""
    assert {f.value for f in ConsentFailure} <= set(rest_codes.CODES)


def test_the_scan_sees_literals_and_constants_apart(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "class E(Exception):\n    code = 'made_up_a'\n"
        "raise E('x', code='made_up_b' if y else rest_codes.NOT_FOUND)\n"
    )
    assert [c for _, c in _literal_codes(sample)] == ["made_up_a", "made_up_b"]


def test_every_constant_is_in_the_table_once():
    constants = {
        name: value
        for name, value in vars(rest_codes).items()
        if name.isupper() and isinstance(value, str) and not name.startswith("_")
    }
    server = {v for v in constants.values() if v not in rest_codes.CLIENT_CODES}
    assert server == set(rest_codes.CODES)
    assert len(set(constants.values())) == len(constants)
    assert not rest_codes.CLIENT_CODES & set(rest_codes.CODES)


def test_every_kernel_error_named_is_a_kernel_class():
    for code, info in rest_codes.CODES.items():
        if info.kernel_error is None:
            continue
        cls = getattr(kernel_errors, info.kernel_error)
        assert issubclass(cls, kernel_errors.OfflineTokenClientError), code


def test_each_code_maps_to_its_class_with_its_advice():
    for code, info in rest_codes.CODES.items():
        response = httpx.Response(info.status, json={"error": code, "message": "m"})
        error = kernel_errors.error_from_response(response)
        assert error.code == code
        if info.kernel_error is not None:
            assert type(error).__name__ == info.kernel_error
        if info.advice is not None:
            assert info.advice in str(error)


def test_kernel_classes_use_listed_codes():
    for cls in vars(kernel_errors).values():
        if isinstance(cls, type) and issubclass(cls, kernel_errors.OfflineTokenClientError):
            assert cls.code in rest_codes.CODES or cls.code in rest_codes.CLIENT_CODES, cls


def test_importable_without_the_server():
    """A kernel or a Dask worker imports the codes without tornado or the server's modules."""
    script = (
        "import sys, jupyter_offline_token.rest_codes as r, jupyter_offline_token.kernel.errors\n"
        "bad = [m for m in sys.modules if m.startswith('tornado') or m.startswith("
        "'jupyter_server') or m in ('jupyter_offline_token.errors', 'jupyter_offline_token.app')]\n"
        "assert not bad, bad\n"
        "assert r.NOT_FOUND in r.CODES\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
