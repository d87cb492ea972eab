"""DESIGN.md's layers: planner/ imports only the stdlib, pydantic, yaml and itself; only the
runner/cli/ package imports typer; only the runner/render/ package imports rich."""

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


def test_typer_and_rich_stay_in_their_packages():
    cli, render = REPO / "runner" / "cli", REPO / "runner" / "render"
    assert (cli / "__init__.py").is_file() and (render / "__init__.py").is_file()
    for f in (REPO / "runner").rglob("*.py"):
        mods = imports(f)
        if not f.is_relative_to(cli):
            assert "typer" not in mods and "click" not in mods, f
        if not f.is_relative_to(render):
            assert "rich" not in mods, f


def test_shell_modules_stay_small_and_say_what_they_own():
    """One module per command group: none grows back into a 700-line file, and each opens with a docstring."""
    for f in [*(REPO / "runner" / "cli").glob("*.py"), *(REPO / "runner" / "render").glob("*.py")]:
        assert len(f.read_text().splitlines()) <= 400, f
        assert ast.get_docstring(ast.parse(f.read_text())), f


ALLOWED_WORKER = {"torch", "torchvision", "transformers", "accelerate", "bitsandbytes", "PIL", "av", "numpy",
                  "tokenizers", "openai", "tenacity"}  # openai + tenacity: the server engines' client


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
              "tenacity": {"remote.py", "aws.py", "client.py"}, "openai": {"client.py"}}  # client.py: the engines' one client


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

    code = ("import sys, runner.cli as c, runner.run.commands, runner.run.driver, runner.cloud.registry\n"
            "runner.cloud.registry.make('local', __import__('runner.config').config.Config(), __import__('pathlib')"
            ".Path('.'))\n"
            "try:\n    c.main(['status'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('boto3', 'botocore', 'paramiko', 'torch') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                       env={"PATH": "/usr/bin:/bin", "BUDGET_HOME": str(tmp_path), "PYTHONPATH": str(REPO)},
                       cwd=tmp_path)
    assert p.stdout.strip().splitlines()[-1] == "[]", p.stdout + p.stderr


# ---------------------------------------------------------------------------- the import graph, lazy imports included

def _modules() -> dict[str, Path]:
    def name(p: Path) -> str:
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return {name(p): p for d in ("planner", "runner") for p in (REPO / d).rglob("*.py")}


def graph() -> dict[str, set[str]]:
    """module -> the project modules it imports, anywhere in the file (function bodies too), with
    `from . import x` read as the submodule x."""
    mods = _modules()

    def resolve(dotted: str) -> str | None:
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in mods:
                return ".".join(parts[:i])
        return None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        pkg = m.split(".") if path.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = pkg[: len(pkg) - node.level + 1] if node.level else []
                prefix = ".".join(base + (node.module.split(".") if node.module else []))
                targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix for a in node.names]
            for t in targets:
                r = resolve(t)
                if r and r != m:
                    edges[m].add(r)
    return edges


def test_no_import_cycle_among_project_modules():
    """Imports point down everywhere - lazy ones inside functions included: a cycle is a knot."""
    g = graph()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package and one module of it importing each other (`from . import x` in its __init__) is how a
            # package is made; any other strongly connected set is a knot
            pair_with_parent = len(comp) == 2 and sorted(comp)[1].startswith(sorted(comp)[0] + ".")
            if len(comp) > 1 and not pair_with_parent:
                cycles.append(sorted(comp))
    sys.setrecursionlimit(10_000)
    for v in g:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def _reaches(module: str, forbidden: tuple[str, ...]) -> set[str]:
    return {d for d in graph()[module] if d.startswith(forbidden)}


def test_groups_import_down_only():
    """The layers, lazy imports included: cloud/ and money/ never import each other; no provider adapter
    imports another (shared types are in cloud/base.py; only the registry knows them all); money/ imports nothing
    above it; the run's state machine and its vocabulary do no I/O (no ledger, no provider, no session)."""
    g = graph()
    adapters = {"runner.cloud.local", "runner.cloud.aws", "runner.cloud.ssh_host"}
    for m, deps in g.items():
        if m.startswith("runner.cloud"):
            assert not {d for d in deps if d.startswith("runner.money")}, (m, deps)
            if m != "runner.cloud.registry":
                assert not (deps & adapters) - {m} - {d for d in deps if d.startswith(m + "_")}, (m, deps)
        if m.startswith("runner.money"):
            above = ("runner.cloud", "runner.run", "runner.cli", "runner.render", "runner.home", "runner.sweep",
                     "runner.calibrate")
            assert not {d for d in deps if d.startswith(above)}, (m, deps)
    pure = {"runner.run.machine", "runner.run.messages", "runner.run.liveness", "runner.money.guard"}
    for m in pure:
        allowed = pure | {"runner.errors", "runner.units", "runner.cloud.base", "planner.errors", "planner.money"}
        assert g[m] <= allowed, (m, g[m] - allowed)


# ---------------------------------------------------------------------------- capabilities, not names

PROVIDER_NAMES = {"local", "aws", "ssh"}


def _outside_cloud():
    for f in (REPO / "runner").rglob("*.py"):
        if f.is_relative_to(REPO / "runner" / "cloud") or f.is_relative_to(REPO / "runner" / "worker"):
            continue
        yield f, f.read_text()


def test_no_provider_name_branch_or_capability_probe_outside_cloud():
    """Outside runner/cloud/ nothing compares a provider's name with a literal, nor probes a provider with
    getattr/hasattr: what a provider can do is in its declared `caps` (cloud/base.py Capabilities)."""
    bad = []
    for f, text in _outside_cloud():
        for node in ast.walk(ast.parse(text, str(f))):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                names = {s.value for s in sides if isinstance(s, ast.Constant) and isinstance(s.value, str)}
                names |= {e.value for s in sides if isinstance(s, (ast.Tuple, ast.List, ast.Set))
                          for e in s.elts if isinstance(e, ast.Constant)}
                if names & PROVIDER_NAMES and "provider" in ast.unparse(node):
                    bad.append(f"{f.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") \
                    and node.args and ("provider" in ast.unparse(node.args[0]) or "caps" in ast.unparse(node.args[0])):
                bad.append(f"{f.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, bad


# ---------------------------------------------------------------------------- sizes

def test_no_class_over_250_lines_and_no_module_over_400_in_runner():
    """Big objects are where jobs pile up: the run loop was one 550-line class. A class over ~250 lines or a
    module over ~400 is split by concept."""
    big = []
    for f in (REPO / "runner").rglob("*.py"):
        text = f.read_text()
        if len(text.splitlines()) > 400:
            big.append(f"{f.relative_to(REPO)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 250:
                big.append(f"{f.relative_to(REPO)}: class {node.name} {node.end_lineno - node.lineno + 1} lines")
    assert not big, big
