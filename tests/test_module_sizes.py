"""No god files: no module of the package over 500 lines, no function over 60 (issue 10 item 4).

Read with ``ast`` only (nothing is imported), so it runs in milliseconds. A module that grows past
a limit is split by what it holds (see the README's module map), not added to the allow-list.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "jupyter_offline_token"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60

# Exceptions, by path relative to the package (none today). An entry needs a reason; the
# stale-entry test below says when one is no longer needed.
ALLOWED_LONG_MODULES: set[str] = set()
ALLOWED_LONG_FUNCTIONS: set[tuple[str, str]] = set()


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _functions(tree: ast.Module) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of every function and method, nested ones included."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    end = child.end_lineno or child.lineno
                    found.append((name, end - child.lineno + 1))
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def _sizes() -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    modules: dict[str, int] = {}
    functions: dict[tuple[str, str], int] = {}
    for path in _modules():
        rel = path.relative_to(PACKAGE).as_posix()
        text = path.read_text(encoding="utf-8")
        modules[rel] = len(text.splitlines())
        for name, lines in _functions(ast.parse(text, filename=str(path))):
            functions[(rel, name)] = lines
    return modules, functions


def test_the_package_is_found() -> None:
    assert (PACKAGE / "__init__.py").is_file()
    assert len(_modules()) > 20


def test_no_module_over_the_limit() -> None:
    modules, _ = _sizes()
    too_long = {
        rel: lines
        for rel, lines in modules.items()
        if lines > MAX_MODULE_LINES and rel not in ALLOWED_LONG_MODULES
    }
    assert not too_long, (
        f"modules over {MAX_MODULE_LINES} lines (split them by what they hold): {too_long}"
    )


def test_no_function_over_the_limit() -> None:
    _, functions = _sizes()
    too_long = {
        f"{rel}:{name}": lines
        for (rel, name), lines in functions.items()
        if lines > MAX_FUNCTION_LINES and (rel, name) not in ALLOWED_LONG_FUNCTIONS
    }
    assert not too_long, (
        f"functions over {MAX_FUNCTION_LINES} lines (give their steps names): {too_long}"
    )


def test_the_allow_lists_hold_only_real_violations() -> None:
    modules, functions = _sizes()
    stale = [rel for rel in ALLOWED_LONG_MODULES if modules.get(rel, 0) <= MAX_MODULE_LINES]
    stale += [
        f"{rel}:{name}"
        for rel, name in ALLOWED_LONG_FUNCTIONS
        if functions.get((rel, name), 0) <= MAX_FUNCTION_LINES
    ]
    assert not stale, f"no longer too long: remove from the allow-list: {stale}"


def test_the_checker_counts_nested_functions_and_methods() -> None:
    source = "class A:\n    def f(self):\n        def g():\n            pass\n        return g\n"
    assert _functions(ast.parse(source)) == [("A.f", 4), ("A.f.g", 2)]
