"""`budget ledger rebuild` keeps every run's verdict and money, however often it is run: a run that is done stays
done, to the cent. A rebuild replays the run directories' money.jsonl - and writes nothing to them (before, it
journaled its replay again under new instance ids, so the next rebuild merged one run's settlement into another
instance and died half way, leaving done runs `created`). A rebuild that dies leaves the ledger it was rebuilding
in place. Real SQLite files and run directories, runs driven on the scripted cloud."""

from __future__ import annotations

import pytest

from runner.money import recovery
from runner.money.ledger import FINAL, Ledger
from tests.runner.scripted import Rig, World


def _done_runs(home) -> dict[str, tuple]:
    """Two runs done on one ledger - the second created first, so a replay in directory order meets them in
    another order than their instance ids."""
    world, facts = World(), {}
    for run_id in ("run-b", "run-a"):
        rig = Rig(home, world, samples=4, run_id=run_id)
        assert rig.driver().run() == "done"
        facts[run_id] = ("done", rig.led.spent_run(run_id))
        rig.led.close()
    return facts


def _ledger_facts(home) -> dict[str, tuple]:
    led = Ledger(home / "ledger.db")
    try:
        return {r["id"]: (r["state"], led.spent_run(r["id"])) for r in led.runs()}
    finally:
        led.close()


def _journals(home) -> dict[str, bytes]:
    return {d.name: (d / "money.jsonl").read_bytes() for d in recovery.run_dirs(home)}


def test_rebuild_again_and_again_keeps_done_runs_done_to_the_cent(fast_home):
    facts = _done_runs(fast_home)
    journals = _journals(fast_home)
    for _ in range(3):
        recovery.rebuild(fast_home)
        assert _ledger_facts(fast_home) == facts
        assert _journals(fast_home) == journals  # the replay is not journaled again
    led = Ledger(fast_home / "ledger.db")
    assert all(r["state"] in FINAL and r["reason"] == "" for r in led.runs())
    assert not led.instances(live=True)
    led.close()
    asides = sorted(p.name for p in fast_home.glob("ledger.db.broken-*") if not p.name.endswith(("-wal", "-shm")))
    assert len(asides) == 3  # three rebuilds in one second: three ledgers kept aside, none overwritten


def test_a_rebuild_that_dies_half_way_leaves_the_ledger_in_place(fast_home, monkeypatch):
    facts = _done_runs(fast_home)
    restore = recovery._restore_instance
    calls = []

    def dies_on_the_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C, or a kill, half way
        return restore(*args, **kw)
    monkeypatch.setattr(recovery, "_restore_instance", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        recovery.rebuild(fast_home)
    assert _ledger_facts(fast_home) == facts  # the old ledger, untouched
    monkeypatch.setattr(recovery, "_restore_instance", restore)
    recovery.rebuild(fast_home)
    assert _ledger_facts(fast_home) == facts
