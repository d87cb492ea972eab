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


ALLOWED_WORKER = {"torch", "torchvision", "transformers", "accelerate", "bitsandbytes", "PIL", "av", "numpy",
                  "tokenizers"}


def test_worker_is_self_contained():
    """runner/worker/ is shipped to the instance as files: stdlib + the ML stack only, relative imports
    inside, nothing from the controller (planner, pydantic, yaml, rich, typer, boto3, paramiko)."""
    for f in (REPO / "runner" / "worker").rglob("*.py"):
        bad = {m for m in imports(f) if m not in ALLOWED_WORKER and m not in sys.stdlib_module_names}
        assert not bad, f"{f.relative_to(REPO)} imports {bad}"


def test_worker_runs_as_a_copied_directory(tmp_path):
    """Copied away from the project (as on an instance), `python -m worker` starts and rejects a bad job
    with one line and exit 2."""
    import shutil
    import subprocess

    shutil.copytree(REPO / "runner" / "worker", tmp_path / "worker", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "job.json").write_text('{"schema": "gpubudget.job/0"}')
    p = subprocess.run([sys.executable, "-m", "worker", "job.json", "out"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, check=False)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("worker: bad job: schema: expected 'gpubudget.job/1'")
    assert '"phase": "failed"' in (tmp_path / "out" / "status.json").read_text()


CLOUD_LIBS = {"boto3": {"aws.py"}, "botocore": {"aws.py"}, "paramiko": {"remote.py"},
              "tenacity": {"remote.py", "aws.py"}}


def test_cloud_libraries_stay_in_their_adapters():
    """boto3 only in cloud/aws.py, paramiko only in cloud/remote.py (STYLE.md: one module owns each)."""
    for f in (REPO / "runner").rglob("*.py"):
        for lib, owners in CLOUD_LIBS.items():
            if lib in imports(f):
                assert f.name in owners, f"{f.relative_to(REPO)} imports {lib}"


def test_the_guard_is_pure():
    mods = imports(REPO / "runner" / "money" / "guard.py")
    assert mods <= {"planner"} | set(sys.stdlib_module_names), mods


def test_status_and_local_runs_load_no_cloud_library(tmp_path):
    """`budget status` and the modules a local run drives import neither boto3, paramiko nor torch."""
    import subprocess

    code = ("import sys, runner.cli as c, runner.runs, runner.orchestrate, runner.cloud.local\n"
            "try:\n    c.main(['status'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('boto3', 'botocore', 'paramiko', 'torch') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                       env={"PATH": "/usr/bin:/bin", "BUDGET_HOME": str(tmp_path), "PYTHONPATH": str(REPO)})
    assert p.stdout.strip().splitlines()[-1] == "[]", p.stdout + p.stderr


def _relative_imports(path: Path) -> set[str]:
    """Module-level `from .x` / `from ..x` imports of a file, as dotted names inside runner/."""
    pkg = path.relative_to(REPO).parent.parts
    out = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg[: len(pkg) - node.level + 1]
            out.add(".".join([*base, *(node.module.split(".") if node.module else [])]))
    return out


def test_groups_import_down_only():
    """runner/cloud/ (providers + sessions) and runner/money/ (ledger, guard, pools, recovery, report) do not
    import each other at module level, and no provider adapter imports another: shared types are in
    cloud/base.py."""
    adapters = {"local", "aws", "ssh_host"}
    for f in (REPO / "runner" / "cloud").glob("*.py"):
        deps = _relative_imports(f)
        assert not {d for d in deps if d.startswith("runner.money")}, (f, deps)
        assert not {d for d in deps if d.split(".")[-1] in adapters - {f.stem}}, (f, deps)
    for f in (REPO / "runner" / "money").glob("*.py"):
        deps = _relative_imports(f)
        assert not {d for d in deps if d.startswith(("runner.cloud", "runner.orchestrate", "runner.runs"))}, (f, deps)
