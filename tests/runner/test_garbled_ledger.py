"""A damaged $BUDGET_HOME/ledger.db is refused by every command that reads it - one `error:` line naming the file,
one `hint:` naming `budget ledger check` / `budget ledger rebuild`, exit 2, nothing launched - and never read as a
fresh ledger (issue 22, finding 9: `budget status` showed an empty ledger and `budget sweep` said "no leaks", both
exit 0; `run`, `report` and `pool list` were internal errors). The damage is real: bytes written over the SQLite
file the ledger made. The home has no run directories (cleaned away), so nothing but the file itself says it
held runs: a fresh-looking ledger would forget its pools and spend."""

from __future__ import annotations

import os
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from runner.money.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]
PAGE = 4096


def _page(path: Path, name: str) -> int:
    """The first page of table or index `name` (1-based), from the schema before the damage."""
    with sqlite3.connect(path) as c:
        return c.execute("SELECT rootpage FROM sqlite_master WHERE name=?", (name,)).fetchone()[0]


def _over(path: Path, start: int, end: int, data: bytes | None = None) -> None:
    raw = bytearray(path.read_bytes())
    raw[start:end] = os.urandom(end - start) if data is None else data
    path.write_bytes(bytes(raw))


def _foreign(path: Path) -> None:
    """Another program's SQLite database in the ledger's place: valid SQLite, not ours."""
    path.unlink()
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        c.execute("INSERT INTO notes (text) VALUES ('not a ledger')")
    c.close()


def _damage(kind: str, path: Path) -> None:
    size = path.stat().st_size
    if kind == "random bytes over it":
        path.write_bytes(os.urandom(size))
    elif kind == "random header page":
        _over(path, 0, PAGE)
    elif kind == "random header fields":  # the magic string kept, the fields after it garbled
        _over(path, 16, 100)
    elif kind == "truncated mid-page":
        path.write_bytes(path.read_bytes()[: 2 * PAGE + 1000])
    elif kind == "truncated to nothing":
        path.write_bytes(b"")
    elif kind == "one byte":
        path.write_bytes(b"x")
    elif kind == "a garbled pools page":  # every runs page intact: the check of `runs` alone passes
        p = _page(path, "pools")
        _over(path, (p - 1) * PAGE, p * PAGE)
    elif kind == "a garbled index page":
        p = _page(path, "runs_plan")
        _over(path, (p - 1) * PAGE, p * PAGE)
    elif kind == "another program's database":
        _foreign(path)
    elif kind == "a directory":
        path.unlink()
        path.mkdir()
    else:
        raise AssertionError(kind)


DAMAGE = ["random bytes over it", "random header page", "random header fields", "truncated mid-page",
          "truncated to nothing", "one byte", "a garbled pools page", "a garbled index page",
          "another program's database", "a directory"]  # (mode 000 is no damage to root, who runs CI: not here)

COMMANDS = [["status"], ["status", "done-run"], ["sweep"], ["report"], ["pool", "list"], ["stop", "done-run"],
            ["run", str(REPO / "plans" / "smoke.yaml"), "--provider", "local", "--yuan", "5", "--yes"]]


@pytest.fixture
def home_with_ledger(budget_home: Path) -> Path:
    """A ledger with a pool, a finished run and its money (several pages of rows); the run's directory is gone."""
    led = Ledger(budget_home / "ledger.db")
    led.ensure_pool("team", Decimal(50), 1.0)
    led.create_run(id="done-run", pool="team", plan="smoke", plan_path="plans/smoke.yaml", provider="local",
                   offer="local:cpu", quantization="nf4", spot=0, cap_cny=Decimal(5), state="done",
                   dir=str(budget_home / "runs" / "done-run"), created_at=1.0)
    with led.transaction():
        for k in range(400):  # enough rows for the tables and indexes to span pages of their own
            led.event("done-run", "tick", f"lease extended by the guard, tick {k}", at=2.0 + k)
    led.close()
    for suffix in ("-wal", "-shm"):
        assert not Path(f"{budget_home / 'ledger.db'}{suffix}").exists()  # closed: everything is in the file
    return budget_home


def _one_error(code: int, err: str, ledger: Path) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 2 and lines[0].startswith("error:") and lines[1].startswith("hint:"), err
    assert str(ledger) in lines[0], err
    assert "budget ledger check" in lines[1] and "budget ledger rebuild" in lines[1], err
    assert "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_garbled_ledger_is_refused_by_every_command(cli, home_with_ledger, command, damage):
    ledger = home_with_ledger / "ledger.db"
    _damage(damage, ledger)
    before = ledger.read_bytes() if ledger.is_file() and os.access(ledger, os.R_OK) else None
    code, out, err = cli(*command)
    _one_error(code, err, ledger)
    assert "no leaks" not in out and "done-run" not in out  # no listing, no clean bill
    assert not (home_with_ledger / "runs").exists() and not (home_with_ledger / "instances").exists()  # nothing launched
    if before is not None:
        assert ledger.read_bytes() == before  # left as it was, for the user and `budget ledger rebuild`
    assert not [p.name for p in home_with_ledger.iterdir() if p.name.startswith("ledger.db.")]  # nothing moved aside


@pytest.mark.parametrize("damage", DAMAGE)
def test_ledger_check_reports_a_garbled_ledger_and_rebuild_takes_its_place(cli, home_with_ledger, damage):
    ledger = home_with_ledger / "ledger.db"
    _damage(damage, ledger)
    code, out, err = cli("ledger", "check")
    assert code == 1 and "problem:" in out and "Traceback" not in err, (out, err)
    code, out, err = cli("ledger", "rebuild", "--yes")
    assert code == 0, err
    assert list(home_with_ledger.glob("ledger.db.broken-*"))  # the damaged one is kept
    code, out, err = cli("pool", "list")
    assert code == 0, err
    code, out, err = cli("ledger", "check")
    assert code == 0, (out, err)


def test_a_new_ledger_never_exists_half_made(budget_home, monkeypatch):
    """A ledger is made aside and put in place whole: a process that dies while making it leaves no empty or
    schema-less ledger.db that a later command would have to refuse (or read as fresh)."""
    from runner.money import migrations

    def dies(db):
        raise KeyboardInterrupt  # killed while the schema is written

    import runner.money.ledger as ledger_mod

    dying = [*migrations.MIGRATIONS[:2], dies]
    monkeypatch.setattr(migrations, "MIGRATIONS", dying)
    monkeypatch.setattr(ledger_mod, "MIGRATIONS", dying, raising=False)
    with pytest.raises(KeyboardInterrupt):
        Ledger(budget_home / "ledger.db")
    assert not (budget_home / "ledger.db").exists()
    monkeypatch.undo()
    led = Ledger(budget_home / "ledger.db")
    assert led.runs() == [] and led.pool_cap("default") is None
    led.close()
    assert sorted(p.name for p in budget_home.iterdir()) == ["ledger.db"]  # no leftovers from the making


def test_opening_the_ledger_twice_at_once_makes_one(budget_home):
    """Two commands on a fresh home: both open the same ledger, neither refuses the other's half-made one."""
    import threading

    errors: list[BaseException] = []

    def open_it():
        try:
            led = Ledger(budget_home / "ledger.db")
            led.ensure_pool("default", Decimal(5), 1.0)
            led.close()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    led = Ledger(budget_home / "ledger.db")
    assert led.pool_cap("default") == Decimal(5)
    led.close()


def test_a_deleted_ledgers_wal_is_not_replayed_onto_a_new_one(budget_home):
    """ledger.db deleted while its -wal was left (a connection still open): the new ledger starts empty - SQLite
    would replay the old WAL's pages onto a new file put in its place - and the old WAL is kept beside it."""
    led = Ledger(budget_home / "ledger.db")
    led.ensure_pool("team", Decimal(50), 1.0)
    keeps_wal_open = sqlite3.connect(budget_home / "ledger.db")  # WAL mode: the -wal stays while this is open
    keeps_wal_open.execute("INSERT INTO pools VALUES ('other', '7', 2.0)")
    keeps_wal_open.commit()
    led.close()
    (budget_home / "ledger.db").unlink()
    assert (budget_home / "ledger.db-wal").exists()
    fresh = Ledger(budget_home / "ledger.db")
    assert fresh.pool_cap("team") is None and fresh.pool_cap("other") is None
    fresh.close()
    keeps_wal_open.close()
    assert list(budget_home.glob("ledger.db-wal.orphaned-*"))
