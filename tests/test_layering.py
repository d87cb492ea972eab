"""DESIGN.md's layers: planner/ imports only the stdlib, pydantic, yaml and itself; only
runner/cli.py imports typer; only runner/render.py imports rich."""

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ALLOWED_PLANNER = {"pydantic", "yaml", "planner"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_planner_is_pure():
    for f in (REPO / "planner").rglob("*.py"):
        bad = {m for m in imports(f) if m not in ALLOWED_PLANNER and m not in sys.stdlib_module_names}
        assert not bad, f"{f.relative_to(REPO)} imports {bad}"


def test_planner_never_imports_runner():
    for f in (REPO / "planner").rglob("*.py"):
        assert "runner" not in imports(f), f


def test_typer_and_rich_stay_in_their_modules():
    for f in (REPO / "runner").rglob("*.py"):
        mods = imports(f)
        if f.name != "cli.py":
            assert "typer" not in mods and "click" not in mods, f
        if f.name != "render.py":
            assert "rich" not in mods, f
