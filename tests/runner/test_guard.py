"""The guard's decisions, and the ledger that carries them, over a real SQLite file."""

from __future__ import annotations

import heapq
import itertools
import os
import random
import shutil
import tempfile
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.models import Offer
from runner.money import recovery
from runner.money.guard import Meter, Policy, decide
from runner.money.ledger import Ledger

T0 = 1_800_000_000.0


def offer(increment: int, minimum: int) -> Offer:
    return Offer(provider="test", instance_type="x", gpu="T4", gpu_count=1, price=Decimal(1),
                 billing_increment_s=increment, billing_minimum_s=minimum)


def test_hourly_billing_uses_the_paid_hour_and_stops_before_the_next():
    p = Policy(tick_s=5, teardown_s=60, lease_s=300)
    hour = Meter(Decimal("3.5"), 3600, 3600, T0, T0)
    # one hour paid (3.5 CNY) with a cap of 5: continue through the hour, the lease reaching its end
    d = decide(Decimal(5), [], hour, T0 + 1000, p)
    assert d.go and d.lease_until == T0 + 1300 and d.committed_cny == Decimal("3.5")
    late = Meter(Decimal("3.5"), 3600, 3600, T0, T0 + 3500 - 60)
    assert decide(Decimal(5), [], late, T0 + 3530, p).go  # a tick + teardown still end inside the hour
    d = decide(Decimal(5), [], late, T0 + 3540, p)
    assert not d.go and d.reason == "budget" and d.next_increment_cny == Decimal("3.5")
    # the last lease ends a teardown before the hour: the instance is gone before the second hour starts
    d = decide(Decimal(5), [], hour, T0 + 3400, p)
    assert d.go and d.lease_until + p.teardown_s <= T0 + 3600


def test_the_guard_bills_by_the_planners_rule():
    """One billing rule (planner/money.py): the guard's projection is the planner's estimate to the digit."""
    from planner import money, optimize
    from runner.money import guard

    assert guard.billed_seconds is money.billed_seconds is optimize.billed_seconds
    m = Meter(Decimal("7.16272"), 1, 60, T0, T0, ended=T0 + 61.2)
    assert m.cost(T0 + 100) == money.charge(Decimal("7.16272"), 62) == Decimal("7.16272") * 62 / 3600


def test_per_second_billing_stops_where_the_money_ends():
    p = Policy(tick_s=5, teardown_s=30, lease_s=600)
    m = Meter(Decimal(36), 1, 60, T0, T0)  # 0.01 CNY a second
    d = decide(Decimal(2), [], m, T0, p)     # 200 s of money: lease 170 s (+30 s teardown)
    assert d.go and abs(d.lease_until - (T0 + 170)) <= 1 and d.committed_cny <= 2
    assert not decide(Decimal("0.5"), [], m, T0, p).go  # 60 s minimum + teardown > 50 s of money


def test_reserve_and_other_instances_count():
    p = Policy(tick_s=5, teardown_s=10, lease_s=100, reserve_cny=Decimal(1))
    other = Meter(Decimal(36), 1, 0, T0, T0 + 100)
    mine = Meter(Decimal(36), 1, 0, T0, T0)
    # other commits 110 s = 1.10; reserve 1; cap 3 leaves 0.90 for mine -> lease 80 s
    d = decide(Decimal(3), [other], mine, T0, p)
    assert d.go and abs(d.lease_until - (T0 + 80)) <= 1


def test_ledger_admission_tick_and_settle(tmp_path):
    led = Ledger(tmp_path / "ledger.db")
    led.ensure_pool("p", Decimal(10), T0)
    led.create_run(id="r1", pool="p", plan="smoke", plan_path="x", provider="local", offer="o", quantization="nf4",
                   spot=0, cap_cny=Decimal(10), dir=str(tmp_path), created_at=T0)
    p = Policy(tick_s=5, teardown_s=10, lease_s=60)
    d, iid = led.admit("r1", offer=offer(1, 60), price_cny_h=Decimal(36), price_original_h=Decimal(36), spot=False,
                       provider="local", now=T0, policy=p)
    assert d.go and iid and led.instance(iid).state == "intent"
    led.tick(iid, T0 + 30, p)
    assert led.spent_instance(iid) == Decimal("0.6")  # 60 s minimum at 0.01 CNY/s
    led.tick(iid, T0 + 90, p)
    assert led.spent_instance(iid) == Decimal("0.9")
    assert led.settle(iid, T0 + 95) == Decimal("0.95")
    assert led.settle(iid, T0 + 500) == Decimal("0.95")  # settling twice changes nothing
    rows = led.spend_rows("r1")
    assert [r["end_at"] - T0 for r in rows] == [30, 90, 95]
    assert all(a["end_at"] == b["start_at"] for a, b in itertools.pairwise(rows))
    # reopened from disk: same money, migrations not re-run
    led.close()
    again = Ledger(tmp_path / "ledger.db")
    assert again.spent_pool("p") == Decimal("0.95")
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_failed_launch_costs_nothing(tmp_path):
    led = Ledger(tmp_path / "ledger.db")
    led.ensure_pool("p", Decimal(10), T0)
    led.create_run(id="r", pool="p", plan="s", plan_path="x", provider="aws", offer="o", quantization="nf4",
                   spot=0, cap_cny=Decimal(10), dir=".", created_at=T0)
    _, iid = led.admit("r", offer=offer(1, 60), price_cny_h=Decimal(7), price_original_h=Decimal(1), spot=False,
                       provider="aws", now=T0, policy=Policy())
    assert led.settle(iid, None, "failed") == 0 and led.instance(iid).state == "failed"


billing = st.sampled_from([(1, 60), (1, 0), (60, 60), (3600, 3600), (60, 600), (1800, 0)])


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 4))
    return {
        "cap": Decimal(draw(st.integers(1, 20000))) / 100,
        "policy": Policy(tick_s=draw(st.sampled_from([2, 5, 10, 30])), teardown_s=draw(st.integers(0, 120)),
                         reserve_cny=Decimal(draw(st.integers(0, 100))) / 100, lease_s=draw(st.integers(10, 900))),
        "instances": [{
            "price": Decimal(draw(st.integers(1, 20000))) / 100,   # 0.01 .. 200 CNY/h
            "billing": draw(billing),
            "launch": draw(st.integers(0, 3600)),
            "work": draw(st.integers(1, 8000)),
            "dies": draw(st.one_of(st.none(), st.integers(0, 8000))),
            "run_cap": draw(st.one_of(st.none(), st.integers(1, 20000))),
        } for _ in range(n)],
        "seed": draw(st.integers(0, 2**31)),
        "ledger_lost_at": draw(st.one_of(st.none(), st.integers(0, 6000))),  # deleted, then rebuilt from journals
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True)
@given(scenarios())
def test_settled_spend_never_exceeds_the_cap(tmp_path_factory, sc):
    """Random prices, billing rules, tick jitter (any gap up to tick_s), teardown times, concurrent instances
    on one pool, controllers that die mid-run (their watchdog ends the instance at its lease; the ledger
    learns it only when a later command settles it - meanwhile the other runs see its lease lapse), and the
    ledger file deleted at a random moment and rebuilt from the runs' journals: the pool's settled spend
    stays within its cap, every run's within its own, and each instance's recorded spend is exactly what
    its provider billed - a lost ledger neither forgets money nor invents it."""
    rng = random.Random(sc["seed"])
    # a real SQLite file; on tmpfs where there is one, since synchronous=FULL fsyncs every one of its
    # thousands of ticks (the guard's logic is what is under test here, not the disk)
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path_factory.mktemp("g")
    led = Ledger(base / "ledger.db")
    cap, p = sc["cap"], sc["policy"]
    led.ensure_pool("pool", cap, T0)
    queue: list[tuple[float, int, str]] = []
    live: dict[int, int] = {}
    ends: dict[int, float] = {}
    for k, inst in enumerate(sc["instances"]):
        run_cap = min(cap, Decimal(inst["run_cap"]) / 100) if inst["run_cap"] else cap
        (base / "runs" / f"r{k}").mkdir(parents=True)  # each run's money.jsonl: what a lost ledger is rebuilt from
        led.create_run(id=f"r{k}", pool="pool", plan="p", plan_path="p", provider="sim", offer="o", quantization="nf4",
                       spot=0, cap_cny=run_cap, dir=str(base / "runs" / f"r{k}"), created_at=T0)
        heapq.heappush(queue, (T0 + inst["launch"], k, "launch"))
    if sc["ledger_lost_at"] is not None:
        heapq.heappush(queue, (T0 + sc["ledger_lost_at"], -1, "lose"))
    while queue:
        now, k, what = heapq.heappop(queue)
        if what == "lose":  # the ledger file is deleted mid-run; `budget ledger rebuild` restores it
            led.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{base / 'ledger.db'}{suffix}").unlink(missing_ok=True)
            recovery.rebuild(base, now=now)
            led = Ledger(base / "ledger.db")
            live = {j: led.instances(run_id=f"r{j}")[0].id for j in live}
            assert led.pool_cap("pool") == cap
            continue
        inst = sc["instances"][k]
        if what == "launch":
            d, iid = led.admit(f"r{k}", offer=offer(*inst["billing"]), price_cny_h=inst["price"],
                               price_original_h=inst["price"], spot=False, provider="sim", now=now, policy=p)
            if not d.go:
                continue
            live[k] = iid
        elif what == "settle":
            led.settle(live[k], ends[k])
            continue
        else:
            iid = live[k]
            started = led.instance(iid).started_at
            if inst["dies"] is not None and now >= started + inst["dies"]:
                # the controller is gone: the watchdog powers off at the lease, billing ends within teardown_s -
                # but nobody settles it until some later command does (the others meanwhile see it lapsed)
                end = led.instance(iid).lease_until + rng.uniform(0, p.teardown_s)
                heapq.heappush(queue, (end + rng.uniform(0, 20) * p.tick_s, k, "settle"))
                ends[k] = end
                continue
            if now >= started + inst["work"]:
                led.settle(iid, now + rng.uniform(0, p.teardown_s))
                continue
            if not led.tick(iid, now, p).go:
                led.settle(iid, now + rng.uniform(0, p.teardown_s))
                continue
        heapq.heappush(queue, (now + rng.uniform(0.2, 1.0) * p.tick_s, k, "tick"))
    assert led.spent_pool("pool") <= cap
    for k in range(len(sc["instances"])):
        assert led.spent_run(f"r{k}") <= Decimal(led.run(f"r{k}")["cap_cny"])
    for i in led.instances():
        assert i.state == "terminated"
        assert led.spent_instance(i.id) == i.meter.cost(i.ended_at)
    led.close()
    shutil.rmtree(base, ignore_errors=True)


def _two_runs(tmp_path, cap: str):
    led = Ledger(tmp_path / "ledger.db")
    led.ensure_pool("p", Decimal(cap), T0)
    for r in ("a", "b"):
        led.create_run(id=r, pool="p", plan="s", plan_path="x", provider="local", offer="o", quantization="nf4",
                       spot=0, cap_cny=Decimal(cap), dir=".", created_at=T0)
    return led


def test_a_dead_run_is_projected_to_its_lease_not_to_now(tmp_path):
    """The audit: kill -9 run A; 75 s later run B on the same pool was stopped at "committed 151 of 150" while
    the real spend was 52. A lease a tick past due has no controller; its watchdog ends it by lease + teardown."""
    led = _two_runs(tmp_path, "150")
    p = Policy(tick_s=5, teardown_s=10, lease_s=30)
    _, a = led.admit("a", offer=offer(1, 0), price_cny_h=Decimal(3600), price_original_h=Decimal(3600), spot=False,
                     provider="local", now=T0, policy=p)  # 1 CNY/s
    led.tick(a, T0 + 5, p)
    lease = led.instance(a).lease_until
    assert lease == T0 + 35  # ... and then A's controller dies
    later = T0 + 80
    d, b = led.admit("b", offer=offer(1, 0), price_cny_h=Decimal(360), price_original_h=Decimal(360), spot=False,
                     provider="local", now=later, policy=p)
    assert d.go and b  # A is bounded by 35 + 10 = 45 CNY, not by 80 + 5 + 10 = 95 CNY still growing
    assert d.committed_cny < Decimal(45) + Decimal(10)


def test_admission_reserves_a_first_stretch_or_refuses(tmp_path):
    """Admitted with a lease of one tick, a run is stopped at its first tick with nothing done: refuse it."""
    led = _two_runs(tmp_path, "20")
    p = Policy(tick_s=1, teardown_s=5, lease_s=60)
    d, iid = led.admit("a", offer=offer(1, 0), price_cny_h=Decimal(3600), price_original_h=Decimal(3600), spot=False,
                       provider="local", now=T0, policy=p, min_lease_s=30)  # 1 CNY/s: 20 CNY is 15 s + teardown
    assert not d.go and d.reason == "short" and iid is None and not led.instances()
    d, iid = led.admit("a", offer=offer(1, 0), price_cny_h=Decimal(3600), price_original_h=Decimal(3600), spot=False,
                       provider="local", now=T0, policy=p, min_lease_s=10)
    assert d.go and d.lease_until >= T0 + 10


def test_liveness_tells_dead_hung_and_slow_starts_apart():
    from runner.run.liveness import STARTUP_S, Watch, may_restart, restarted, verdict

    w = Watch()
    v, w = verdict(w, "alive", None, 0, 60)
    assert v == "ok"
    assert verdict(w, "alive", None, 300, 60)[0] == "ok"  # importing torch on a cold disk: not a hang yet
    assert verdict(w, "alive", None, STARTUP_S + 1, 60)[0] == "hung"
    v, w = verdict(w, "alive", "t1", STARTUP_S + 2, 60)
    assert v == "ok"  # it beats
    assert verdict(w, "alive", "t1", STARTUP_S + 50, 60)[0] == "ok"
    assert verdict(w, "alive", "t1", STARTUP_S + 63, 60)[0] == "hung"  # then its heartbeat stops for over 60 s
    assert verdict(w, "gone", "t1", 0, 60)[0] == "dead" and verdict(w, " exit 3\n", "t1", 0, 60)[0] == "exit 3"
    assert may_restart(w, restarts=1)
    w = restarted(w, 1000)
    assert not may_restart(w, restarts=1)
    assert verdict(w, "alive", "t1", 1100, 60)[0] == "ok"  # the old beat is not the new worker's

ADMIT = """
import sys
from decimal import Decimal
from planner.models import Offer
from runner.money.guard import Policy
from runner.money.ledger import Ledger
led = Ledger(sys.argv[1])
offer = Offer(provider="test", instance_type="x", gpu="T4", gpu_count=1, price=Decimal(1), billing_increment_s=1,
              billing_minimum_s=0)
d, iid = led.admit(sys.argv[2], offer=offer, price_cny_h=Decimal(3600), price_original_h=Decimal(3600), spot=False,
                   provider="test", now=float(sys.argv[3]), policy=Policy(tick_s=1, teardown_s=5, lease_s=10))
print("go" if d.go else "refused")
"""


def test_admission_is_atomic_across_processes(tmp_path):
    """Eight controllers - real processes - ask one pool at once for an instance at 1 CNY/s that commits 15 CNY
    (a 10 s lease + 5 s of teardown): a 50 CNY pool admits three and refuses the rest. Admission (the guard's
    check and the intent row) is one BEGIN IMMEDIATE transaction, so no two can spend the same yuan."""
    import subprocess
    import sys

    led = Ledger(tmp_path / "ledger.db")
    led.ensure_pool("team", Decimal(50), T0)
    for k in range(8):
        led.create_run(id=f"r{k}", pool="team", plan="p", plan_path="x", provider="test", offer="o",
                       quantization="nf4", spot=0, cap_cny=Decimal(50), dir="", created_at=T0)
    led.close()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    procs = [subprocess.Popen([sys.executable, "-c", ADMIT, str(tmp_path / "ledger.db"), f"r{k}", str(T0)],
                              stdout=subprocess.PIPE, text=True, env=env) for k in range(8)]
    answers = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(answers) == ["go"] * 3 + ["refused"] * 5, answers
    led = Ledger(tmp_path / "ledger.db")
    assert len(led.instances(pool="team")) == 3
    from runner.money.guard import committed
    assert committed([i.meter for i in led.instances(pool="team")], T0, Policy(tick_s=1, teardown_s=5)) <= 50
