"""The wheel ships no dead or test-only code: every public name in provision/ is used there.

Recording reporters, test stores and replay tables live in tests/support/. The simulator
(`labctl sim`) and the probe agent (copied to guests) are shipped on purpose and not checked.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "provision"
NOT_CHECKED = ("sim/", "probe/agent.py", "__main__.py")


def shipped_modules() -> dict[str, str]:
    return {
        path.relative_to(PACKAGE).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def public_definitions(source: str) -> Iterator[tuple[str, int]]:
    """(name, line) of each public top-level function, class and CONSTANT of a module."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            registered = any(
                re.search(r"\.(command|group)\(", ast.unparse(d)) for d in node.decorator_list
            )  # a Click command is used by its group
            if not node.name.startswith("_") and not registered:
                yield node.name, node.lineno
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id.isupper():
                    yield target.id, node.lineno


def words(text: str) -> Counter[str]:
    return Counter(re.findall(r"\w+", text))


def test_every_public_name_of_the_package_is_used_by_the_package() -> None:
    modules = shipped_modules()
    everywhere = sum((words(source) for source in modules.values()), Counter[str]())
    unused = [
        f"provision/{module}:{line} {name}"
        for module, source in modules.items()
        if not module.startswith(NOT_CHECKED)
        for name, line in public_definitions(source)
        # the definition's own line does not count as a use
        if everywhere[name] - words(source.splitlines()[line - 1])[name] == 0
    ]
    assert not unused, "only tests (or nobody) use these; move them to tests/support/: " + (
        ", ".join(unused)
    )
