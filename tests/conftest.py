import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def budget_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own $BUDGET_HOME: no test reads or writes the user's catalog."""
    home = tmp_path / "budget-home"
    monkeypatch.setenv("BUDGET_HOME", str(home))
    return home


REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The tiny model is launch-overhead bound, so one thread per worker is as fast; with two, OpenMP's
# spin-waiting threads made a busy 2-core machine (CI next to another job) up to 8x slower (400 s vs 52 s
# for the public-plan test). Set before torch is imported; every worker subprocess inherits it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tables are asserted on: the same width everywhere (a terminal, a pipe, an xdist worker) unless a test
# sets its own. Set before runner.render is imported (its console reads it when made).
os.environ["COLUMNS"] = "200"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny random Qwen3-VL, built offline once per session (FACTS.md's recipe)."""
    from runner.worker import tiny

    return tiny.build(tmp_path_factory.mktemp("models") / tiny.NAME)


@pytest.fixture
def cli(capsys):
    """Run `budget ARGS...` in this process; returns (exit code, stdout, stderr)."""
    from runner.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err
    return run


HEAVY_FIXTURES = {"aws_cloud", "moto_server", "ssh_host", "local_home", "tiny_model"}  # seconds each, not ms


def pytest_collection_modifyitems(config, items):
    """Longest first (a stable sort: otherwise in file order): tests marked `longest` (a minute or more), the slow
    end-to-end tests, then the tests on a real test cloud, a tiny model or a stateful property (seconds each), then
    the rest (milliseconds). With three xdist workers, a long test started last leaves the other two idle while it
    runs; longest-first keeps them all busy to the end."""
    def rank(item) -> int:
        if item.get_closest_marker("longest") is not None:  # e.g. the Ray cluster's scenarios: over a minute
            return -1
        if item.get_closest_marker("slow") is not None:
            return 0
        heavy = HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())) or "property" in item.nodeid
        return 1 if heavy else 2
    items.sort(key=rank)


# The stateful property tests' thoroughness: CI runs the "ci" profile (seconds); `HYPOTHESIS_PROFILE=thorough`
# runs ten times as many sequences (minutes) - e.g. before a release or after touching the run's state machine.
def _hypothesis_profiles() -> None:
    from hypothesis import settings

    settings.register_profile("ci", settings())
    settings.register_profile("thorough", settings(max_examples=3000))
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_hypothesis_profiles()
