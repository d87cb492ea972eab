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
    """Longest first (a stable sort: otherwise in file order): the slow end-to-end tests, then the tests on a
    real test cloud, a tiny model or a stateful property (seconds each), then the rest (milliseconds) - and, under
    xdist, dealt into one lane per worker. pytest-xdist's worksteal scheduler hands each worker one contiguous
    share of the collection at the start and idle workers steal from the END of the busiest queue: with the long
    tests all at the front, the first worker would run every slow test one after another while the others stole
    its quick tail. Each lane holds its turn of the long tests first, then its share of the quick ones."""
    def rank(item) -> int:
        if item.get_closest_marker("slow") is not None:
            return 0
        heavy = HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())) or "property" in item.nodeid
        return 1 if heavy else 2
    items.sort(key=rank)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        items[:] = lanes(items, workers, [rank(i) < 2 for i in items])


def lanes(items: list, workers: int, long: list[bool]) -> list:
    """`items` (long ones first) reordered so that worksteal's first split - `len // workers` to the first worker,
    then what is left over the rest, in order - gives every worker its turn of the long items, dealt round
    robin, followed by its share of the quick ones."""
    sizes, left = [], len(items)
    for k in range(workers):
        sizes.append(left // (workers - k))
        left -= sizes[-1]
    heavy = [i for i, is_long in zip(items, long, strict=True) if is_long]
    quick = iter(i for i, is_long in zip(items, long, strict=True) if not is_long)
    out = []
    for k in range(workers):
        lane = heavy[k::workers]
        out += lane + [next(quick) for _ in range(max(0, sizes[k] - len(lane)))]
    return out + list(quick)


# The stateful property tests' thoroughness: CI runs the "ci" profile (seconds); `HYPOTHESIS_PROFILE=thorough`
# runs ten times as many sequences (minutes) - e.g. before a release or after touching the run's state machine.
def _hypothesis_profiles() -> None:
    from hypothesis import settings

    settings.register_profile("ci", settings())
    settings.register_profile("thorough", settings(max_examples=3000))
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_hypothesis_profiles()
