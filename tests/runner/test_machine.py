"""The run's state machine, pair by pair: every (phase, event) of `machine.TABLE` has a case here saying what
it leads to (the next phase and the effects asked for), and a test checks the cases and the table agree - a
pair added to the table without a case, or a case for a pair the table lacks, fails. Pure: no I/O, no clock."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from planner.errors import BudgetTooSmall
from runner.errors import CapacityError, RemoteError, WorkerError
from runner.money.guard import Policy
from runner.run import machine as m
from runner.run import messages as ev
from runner.run.liveness import Watch

POLICY = Policy(tick_s=1, teardown_s=20, lease_s=60)
RULES = m.Rules(policy=POLICY, spot=True, ssh_wait_s=60, bootstrap_timeout_s=600, offers=2, stale_s=60)
ON_DEMAND = replace(RULES, spot=False)
T = 1_800_000_000.0


def S(phase: str, **kw) -> m.State:
    base = dict(iid=1, pid="i-1", reached=True, session=phase in ("armed", "pushed", "running", "reviving"),
                worker=phase in ("running", "reviving"))
    base.update(kw)
    return m.State(phase=phase, **base)


@dataclass
class Case:
    state: m.State
    event: ev.Event
    phase: str                                  # where it leads
    effects: list[str] = field(default_factory=list)  # the kinds of the effects asked for, in order
    rules: m.Rules = RULES
    ending: str | None = None                   # tearing-down: the ending's state:reason

    @property
    def pair(self) -> tuple[str, str]:
        return self.state.phase, self.event.kind

    def id(self) -> str:
        return f"{self.state.phase}-{self.event.kind}-{self.phase}"


GUARDED = ("booting", "armed", "running", "reconnecting", "resuming")
WAITING = ("booting", "armed", "reconnecting", "resuming")
LIVE = [p for p in m.PHASES if p not in ("tearing-down", "handed-over", "ended")]

CASES: list[Case] = [
    # in every live phase: Ctrl-C / SIGTERM, and an error nobody handles, tear down
    *[Case(S(p), ev.Interrupted(at=T), "tearing-down", ["teardown"], ending="stopped:interrupted") for p in LIVE],
    *[Case(S(p), ev.Failed(at=T, error=WorkerError("boom", "x")), "tearing-down", ["teardown"], ending="failed:boom")
      for p in LIVE if p not in ("armed", "pushed", "running", "reviving")],
    # a session error where the instance is worked on: is the instance still there?
    *[Case(S(p), ev.Failed(at=T, error=RemoteError("dropped", "x")), p, ["check-instance"])
      for p in ("armed", "pushed", "running", "reviving")],
    *[Case(S(p), ev.Gone(at=T, state="terminated"), "relaunching", ["disconnect", "leave"])
      for p in ("armed", "pushed", "running", "reviving", "reconnecting")],
    *[Case(S(p), ev.Present(at=T), "reconnecting", ["disconnect", "connect"])
      for p in ("armed", "pushed", "running", "reviving")],
    # a new session goes back where the old one broke
    *[Case(S("reconnecting", back=b), ev.Connected(at=T), b, e)
      for b, e in (("running", []), ("armed", ["bootstrap"]), ("pushed", ["start-worker"]))],
    # wherever the guard ticks: go extends the lease there (when a session is open), stop and a user's stop end it
    *[Case(S(p, session=True), ev.GuardGo(at=T, lease_until=T + 60), p, ["write-lease"]) for p in GUARDED],
    *[Case(S(p), ev.GuardStop(at=T), "tearing-down", ["teardown"], ending="stopped:budget") for p in GUARDED],
    *[Case(S(p), ev.StopRequested(at=T), "tearing-down", ["teardown"], ending="stopped:user") for p in GUARDED],
    # waiting for a session or the bootstrap: not yet -> the guard ticks; a tick -> try again, or give up late
    *[Case(S(p), ev.NotReady(at=T, why="refused"), p, ["guard"]) for p in WAITING],
    *[Case(S(p, deadline=T + 5), ev.Tick(at=T), p, ["poll-bootstrap" if p == "armed" else "connect"]) for p in WAITING],
    *[Case(S(p, deadline=T - 1), ev.Tick(at=T), "tearing-down", ["teardown"]) for p in ("armed",)],
    # created
    Case(S("created", iid=None, pid=None), ev.Start(at=T), "created", ["admit"]),
    Case(S("created", iid=None, pid=None), ev.Admitted(at=T, iid=7), "admitted", ["launch"]),
    Case(S("created", iid=None, pid=None), ev.AdmitRefused(at=T, error=BudgetTooSmall("not launching", "x")),
         "tearing-down", ["teardown"], ending="failed:not launching"),
    # admitted
    Case(S("admitted", pid=None), ev.Start(at=T, resume=True), "admitted", ["launch"]),
    Case(S("admitted", pid=None), ev.AdmitRefused(at=T, error=BudgetTooSmall("not launching", "x")),
         "tearing-down", ["teardown"], ending="failed:not launching"),
    Case(S("admitted", pid=None), ev.Launched(at=T, pid="i-9"), "booting", ["note-launch", "connect"]),
    Case(S("admitted", attempt=1, pid=None), ev.LaunchRefused(at=T, error=CapacityError("none left", "x")),
         "created", ["abandon", "admit"]),
    # booting
    Case(S("booting"), ev.Start(at=T, resume=True), "resuming", ["reattach"]),
    Case(S("booting", session=False), ev.Connected(at=T), "booting", ["arm"]),
    Case(S("booting"), ev.Gone(at=T, state="terminated"), "tearing-down", ["teardown"]),
    Case(S("booting", session=True), ev.Armed(at=T), "armed", ["bootstrap"]),
    # armed: bootstrap, push
    Case(S("armed"), ev.Start(at=T, resume=True), "resuming", ["reattach"]),
    Case(S("armed"), ev.BootstrapDone(at=T, rc=0), "armed", ["push"]),
    Case(S("armed"), ev.Pushed(at=T), "pushed", ["start-worker"]),
    # pushed
    Case(S("pushed"), ev.Start(at=T, resume=True), "resuming", ["reattach"]),
    Case(S("pushed"), ev.Started(at=T), "running", []),
    # running
    Case(S("running"), ev.Start(at=T, resume=True), "resuming", ["reattach"]),
    Case(S("running"), ev.Tick(at=T), "running", ["poll"]),
    Case(S("running"), ev.Polled(at=T, probe="alive", beat="1"), "running", ["guard"]),
    Case(S("running"), ev.Exited(at=T, code=0), "tearing-down", ["teardown"], ending="done:"),
    Case(S("running"), ev.Notice(at=T, text="terminate"), "relaunching", ["leave"]),
    Case(S("running"), ev.HandedOver(at=T), "handed-over", ["disconnect"]),
    # reconnecting
    Case(S("reconnecting"), ev.Start(at=T, resume=True), "resuming", ["reattach"]),
    # reviving
    Case(S("reviving"), ev.Start(at=T, resume=True), "resuming", ["reattach"]),
    Case(S("reviving"), ev.Started(at=T), "running", []),
    Case(S("reviving"), ev.Failed(at=T, error=WorkerError("cannot start", "x")), "tearing-down", ["teardown"]),
    # relaunching
    Case(S("relaunching", leave="moved"), ev.Start(at=T, resume=True), "relaunching", ["leave"]),
    Case(S("relaunching"), ev.AttemptEnded(at=T), "created", ["admit"]),
    # resuming
    Case(S("resuming"), ev.Start(at=T, resume=True), "resuming", ["reattach"]),
    Case(S("resuming"), ev.Found(at=T, iid=1, pid="i-1"), "resuming", ["connect"]),
    Case(S("resuming", session=False), ev.Connected(at=T), "resuming", ["inspect"]),
    Case(S("resuming"), ev.Gone(at=T, state="stopped"), "tearing-down", ["teardown"], rules=ON_DEMAND),
    Case(S("resuming", session=True), ev.Inspected(at=T, fired=False, worker=True), "resuming", ["arm"]),
    Case(S("resuming", session=True, worker=True), ev.Armed(at=T), "running", ["guard"]),
    # tearing-down
    Case(S("tearing-down", ending=ev.Ending("stopped", "user")), ev.Start(at=T, resume=True), "tearing-down",
         ["teardown"]),
    Case(S("tearing-down", ending=ev.Ending("done")), ev.TornDown(at=T), "ended", []),
    # a second Ctrl-C while the teardown is pending: the teardown is still asked for, never dropped
    Case(S("tearing-down", ending=ev.Ending("done")), ev.Interrupted(at=T), "tearing-down", ["teardown"]),
]


@pytest.mark.parametrize("case", CASES, ids=Case.id)
def test_each_pair_leads_where_the_table_says(case: Case):
    state, effects = m.step(case.state, case.event, case.rules)
    assert state.phase == case.phase
    assert [e.kind for e in effects] == case.effects
    assert all(not e.answers for e in effects[:-1])  # only the last effect may answer
    if case.ending is not None:
        assert f"{state.ending.state}:{state.ending.reason}" == case.ending


def test_the_table_and_the_cases_agree():
    covered = {c.pair for c in CASES}
    assert covered == set(m.TABLE), {"untested": set(m.TABLE) - covered, "not in the table": covered - set(m.TABLE)}


# ---------------------------------------------------------------------------------- branches within a pair

def test_a_first_launch_refused_fails_and_a_relaunch_tries_the_next_offer_then_fails():
    refused = ev.LaunchRefused(at=T, error=CapacityError("no capacity", "x"))
    assert m.step(S("admitted", attempt=0), refused, RULES)[0].ending.state == "failed"
    s, effects = m.step(S("admitted", attempt=1, offer=0), refused, RULES)
    assert (s.phase, s.offer, s.iid) == ("created", 1, None)
    assert m.step(S("admitted", attempt=1, offer=1), refused, RULES)[0].ending.state == "failed"  # no offer left


def test_a_relaunch_the_budget_cannot_pay_is_the_budgets_stop():
    refused = ev.AdmitRefused(at=T, error=BudgetTooSmall("not launching", "x"))
    s, _ = m.step(S("created", attempt=2, iid=None), refused, RULES)
    assert (s.ending.state, s.ending.reason) == ("stopped", "budget")


def test_the_worker_ending_says_how_the_run_ends():
    lease_capped = S("running", lease_capped=True)
    cases = [(ev.Exited(at=T, code=0), S("running"), "done", ""),
             (ev.Exited(at=T, code=3, fired=True), S("running"), "stopped", "lease"),
             (ev.Exited(at=T, code=3, fired=True), lease_capped, "stopped", "budget"),
             (ev.Exited(at=T, code=3, stopped="deadline"), S("running"), "stopped", "deadline"),
             (ev.Exited(at=T, code=3), S("running"), "stopped", "worker"),
             (ev.Notice(at=T, text="x"), S("running"), "stopped", "worker")]  # (on-demand: no relaunch)
    for event, state, ending, reason in cases:
        s, _ = m.step(state, event, ON_DEMAND)
        assert (s.ending.state, s.ending.reason) == (ending, reason), event
    s, _ = m.step(S("running"), ev.Exited(at=T, code=1, error="CUDA out of memory"), RULES)
    assert s.ending.state == "failed" and "exit 1" in s.ending.reason and "out of memory" in s.ending.reason


def test_a_dead_or_hung_worker_is_restarted_until_its_restarts_run_out():
    s = S("running", watch=Watch(beat="1", since=T, beating=True))
    s2, effects = m.step(s, ev.Polled(at=T + 1, probe="gone"), RULES)
    assert s2.phase == "reviving" and effects[0].kind == "restart-worker" and not effects[0].kill
    s3, effects = m.step(s, ev.Polled(at=T + 61, probe="alive", beat="1"), RULES)
    assert s3.phase == "reviving" and effects[0].kill  # hung: its process group is killed first
    spent = S("running", watch=Watch(beat="1", since=T, beating=True, restarted=2))
    s4, _ = m.step(spent, ev.Polled(at=T + 1, probe="gone"), RULES)
    assert s4.ending.state == "failed" and "after 2 restart(s)" in s4.ending.reason


def test_waits_give_up_at_their_deadline_with_why():
    s, _ = m.step(S("booting", deadline=T, note="connection refused"), ev.Tick(at=T), RULES)
    assert s.ending.state == "failed" and "within 1 min" in s.ending.reason and "connection refused" in s.ending.reason
    s, _ = m.step(S("armed", deadline=T), ev.Tick(at=T), RULES)
    assert "bootstrap.sh did not finish within 10 min" in s.ending.reason
    s, _ = m.step(S("armed"), ev.BootstrapDone(at=T, rc=2, last="python3 not found"), RULES)
    assert "bootstrap.sh exited 2" in s.ending.reason and "python3 not found" in s.ending.reason


def test_an_instance_gone_off_spot_fails_and_the_fourth_reclaim_gives_up():
    s, _ = m.step(S("running"), ev.Gone(at=T, state="terminated"), ON_DEMAND)
    assert s.ending.state == "failed" and "i-1 is terminated" in s.ending.reason
    s, _ = m.step(S("relaunching", attempt=3), ev.AttemptEnded(at=T), RULES)
    assert s.ending.state == "failed" and "taken away 4 times" in s.ending.reason


def test_the_guard_notes_a_lease_it_could_not_extend_in_full():
    s, _ = m.step(S("running"), ev.GuardGo(at=T, lease_until=T + 10), RULES)
    assert s.lease_capped
    s, _ = m.step(S("running"), ev.GuardGo(at=T, lease_until=T + 60), RULES)
    assert not s.lease_capped


def test_a_teardown_that_cannot_terminate_ends_failed_saying_it_may_still_bill():
    s, _ = m.step(S("tearing-down", ending=ev.Ending("done")), ev.TornDown(at=T, stuck=RemoteError("host down", "x")),
                  RULES)
    assert s.ending.state == "failed" and "may still be billing" in s.ending.error.message


def test_a_pair_outside_the_table_ends_the_run_as_failed():
    s, effects = m.step(S("pushed"), ev.Tick(at=T), RULES)
    assert s.phase == "tearing-down" and s.ending.state == "failed" and "internal" in s.ending.reason
    assert [e.kind for e in effects] == ["teardown"]


def test_the_state_is_a_value():
    s = S("running")
    assert m.step(s, ev.Tick(at=T), RULES) == m.step(s, ev.Tick(at=T), RULES)
    assert s == S("running")  # step never changes the state it was given


def test_design_md_shows_every_pair_of_the_table():
    """docs/DESIGN.md's state table names, for each phase, every event the table accepts there (in the phase's
    own row, or a row of phases it belongs to), and no phase the machine lacks."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "DESIGN.md").read_text()
    table = text[text.index("| phase | event"):].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[2:]:
        head, events = line.strip("|").split("|", 1)
        rows[head.strip()] = events
    live = [p for p in m.PHASES if p not in m.FINAL_PHASES]

    def row_for(phase: str, kind: str) -> bool:
        mine = rows.get(phase, "")
        groups = [ev for head, ev in rows.items() if phase in [h.strip() for h in head.split(",")]
                  or (head.startswith("every live phase") and phase != "tearing-down")]
        return any(f"{kind} ->" in ev for ev in [mine, *groups])
    missing = [(p, k) for p, k in m.TABLE if not row_for(p, k) and not (k == "probe" and "probe ok" in rows[p])]
    assert not missing, missing
    named = {h.strip() for head in rows for h in head.split(",")} - {"every live phase but tearing-down"}
    assert named <= set(live), named - set(live)
