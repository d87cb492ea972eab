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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny random Qwen3-VL, built offline once per session (FACTS.md's recipe)."""
    from runner.worker import tiny

    return tiny.build(tmp_path_factory.mktemp("models") / tiny.NAME)
