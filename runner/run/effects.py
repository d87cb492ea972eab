"""The ports: how each effect of the state machine is performed - on the ledger (admission, the guard's
tick, settlements), the provider (launch, status, terminate) and the instance (runner/run/instance.py) - and
the one event each answers with. Nothing here sleeps or decides what comes next: the driver feeds the answer
to `machine.step`. Our errors raised here become the machine's `error` event (the driver catches them)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from planner.errors import BudgetTooSmall, GpuBudgetError, InputError

from ..clock import Clock
from ..cloud import registry
from ..cloud.base import GONE_STATES, LaunchSpec
from ..errors import (
    AuthError,
    CapacityError,
    NotFoundError,
    NotReadyError,
    QuotaError,
    RefusedError,
    RemoteError,
    RunError,
)
from ..money import results
from ..money.guard import Policy
from ..money.ledger import Ledger
from ..units import duration, money
from . import handover, progress, teardown
from . import messages as ev
from .instance import OnInstance
from .machine import State
from .request import Request


def first_stretch_s(ssh_wait_s: float, policy: Policy) -> float:
    """The least lease a launch must be able to pay for: its boot (the wait for SSH) and ten ticks of work
    (or a whole lease, when that is shorter)."""
    return ssh_wait_s + min(10 * policy.tick_s, policy.lease_s)


def lease_minutes(lease_until: float, now: float) -> int:
    return max(1, math.floor((lease_until - now) / 60))


class Effects:
    def __init__(self, led: Ledger, provider, req: Request, run_dir: Path, clock: Clock, event):
        self.led, self.provider, self.req, self.dir, self.clock, self.event = led, provider, req, run_dir, clock, event
        self.policy = req.policy_obj
        self.on = OnInstance(req, provider, run_dir, event)
        self.decision = None  # the guard's last verdict (for the live line)

    def perform(self, effect: ev.Effect, s: State) -> ev.Event | None:
        return getattr(self, effect.kind.replace("-", "_"))(effect, s)

    # -------------------------------------------------------------------------------- money and launches

    def admit(self, e: ev.Admit, s: State) -> ev.Event:
        choice = self.req.offers[s.offer]
        stretch = first_stretch_s(self.req.ssh_wait_s, self.policy)
        d, iid = self.led.admit(self.req.run_id, offer=choice.offer, price_cny_h=choice.price_cny_h,
                                price_original_h=choice.price_original_h, spot=self.req.spot,
                                provider=self.provider.name, now=self.clock.now(), policy=self._boot(),
                                min_lease_s=stretch, attempt=s.attempt, offer_index=s.offer)
        if d.go:
            return ev.Admitted(iid=iid)
        run = self.led.run(self.req.run_id)
        pool = f"pool {run['pool']} has {money(self.led.spent_pool(run['pool']))} CNY spent"
        kind = choice.offer.instance_type
        if d.reason == "short":
            why = (f"the money left would keep {kind} at {money(choice.price_cny_h)} CNY/h running for less than "
                   f"{duration(stretch)} (its boot and a first stretch of work); it would be stopped at its first tick "
                   f"with nothing done (committed {money(d.committed_cny)} of {money(d.cap_cny)} CNY, {pool})")
        else:
            why = (f"{kind} at {money(choice.price_cny_h)} CNY/h would commit {money(d.committed_cny)} CNY (billing "
                   f"minimum + a tick + teardown) against a cap of {money(d.cap_cny)} CNY ({pool})")
        if s.attempt:
            self.event("guard", f"no relaunch: not launching: {why}")
        return ev.AdmitRefused(error=BudgetTooSmall(f"not launching: {why}", "raise --yuan, or use another --pool"))

    def launch(self, e: ev.Launch, s: State) -> ev.Event:
        """The launch call - after the guard renews the intent's boot lease: an admission made before the
        controller slept or died must not send an instance off on a lease that has already run out."""
        choice, now = self.req.offers[s.offer], self.clock.now()
        d = self.decision = self.led.tick(s.iid, now, self._boot())
        lease = self.led.instance(s.iid).lease_until
        if not d.go or lease < now + first_stretch_s(self.req.ssh_wait_s, self.policy):
            return ev.AdmitRefused(error=BudgetTooSmall(
                f"not launching: the money left no longer pays {choice.offer.instance_type}'s boot and a first "
                f"stretch of work (committed {money(d.committed_cny)} of {money(d.cap_cny)} CNY)",
                "raise --yuan, or use another --pool"))
        spec = LaunchSpec(self.req.run_id, choice.offer, self.req.spot, boot_minutes=lease_minutes(lease, now),
                          lease_until=lease, grace_s=self._grace(), attempt=s.attempt, offer_index=s.offer,
                          max_spot_price=self._ceiling(choice))
        try:
            info = self.provider.launch(spec)
        except (CapacityError, QuotaError) as err:
            self.led.settle(s.iid, None, "failed")  # the provider answered no: nothing was made
            return ev.LaunchRefused(error=err)
        except (AuthError, NotFoundError, InputError):  # the provider's answer, or nothing was asked:
            self.led.settle(s.iid, None, "failed")          # nothing was made. Any other failure may hide a launch
            raise                                            # (a reply lost): the teardown looks for it by tag
        return ev.Launched(pid=info.provider_id, address=info.address, launched_at=info.launched_at)

    def note_launch(self, e: ev.NoteLaunch, s: State) -> None:
        self.led.set_instance(s.iid, provider_id=e.pid, state="launching",
                              launched_at=e.launched_at or self.clock.now(), address=e.address)
        choice = self.req.offers[s.offer]
        price = self.provider.market_price(e.pid) if self.req.spot and self.provider.caps.spot_market else None
        ceiling = self._ceiling(choice)
        if price is not None:
            self.led.set_instance(s.iid, market_price_h=str(price))
            self.event("spot", f"market price at launch {price} {choice.offer.currency}/h; the ledger bills "
                       f"{ceiling or choice.price_original_h} (the most it may be charged)")
        self.event("launched", f"{e.pid} ({choice.offer.instance_type}"
                   f"{f', spot, MaxPrice {ceiling} USD/h' if ceiling else ''}"
                   f"{', spot' if self.req.spot and not ceiling else ''})")

    def abandon(self, e: ev.Abandon, s: State) -> None:
        self.led.settle(e.iid, None, "failed")
        refused, nxt = self.req.offers[s.offer - 1], self.req.offers[s.offer]
        self.event("fallback", f"{refused.offer.instance_type} refused ({e.why}); relaunching on "
                   f"{nxt.offer.instance_type} at {money(nxt.price_cny_h)} CNY/h")

    def guard(self, e: ev.Guard, s: State) -> ev.Event:
        """Accrue, decide, extend the lease in the ledger (one transaction) - or say why not."""
        d = self.decision = self.led.tick(s.iid, self.clock.now(), self.policy)
        if not d.go:
            why = (f"stop: the next {duration(self.policy.tick_s)} + teardown would pass the cap (committed "
                   f"{money(d.committed_cny)} of {money(d.cap_cny)} CNY)")
            self.event("guard", why)
            return ev.GuardStop(why=why)
        if self.led.run(self.req.run_id)["stop_requested"] or (self.dir / "STOP").exists():
            self.event("stop", "requested by the user")
            return ev.StopRequested()
        return ev.GuardGo(lease_until=self.led.instance(s.iid).lease_until)

    def write_lease(self, e: ev.WriteLease, s: State) -> None:
        self.on.write_lease(e.until)

    def check_instance(self, e: ev.CheckInstance, s: State) -> ev.Event:
        """The session broke: did the cloud take the instance, or does the worker run on, detached?"""
        try:
            state = self.provider.status(s.pid).state if s.pid else "running"
        except GpuBudgetError:  # an API that cannot tell: assume it is there and reconnect
            state = "running"
        if state in GONE_STATES:
            return ev.Gone(state=state)
        self.event("ssh", f"lost ({e.why}); reconnecting")
        return ev.Present()

    def leave(self, e: ev.Leave, s: State) -> ev.Event:
        """Leave the current instance for a new one: after a notice, terminate it now (billing ends now, not at
        the reclaim); after a reclaim, settle it where the cloud took it."""
        held = progress.held(self.dir)
        inst = self.led.instance(s.iid)
        if e.how == "moved":
            self.event("interrupted", f"spot interruption notice on {s.pid} ({e.why}); {held} finished samples "
                       "fetched; moving to a new instance")
            teardown.end(self.led, self.provider, inst, how="stop", run_dir=self.dir, policy=self.policy,
                         event=self.event, clock=self.clock, session=self.on.session, fetch_lines=s.session)
        else:
            self.event("interrupted", f"{e.why}; {held} finished samples were fetched before")
            teardown.end(self.led, self.provider, inst, how="reclaimed", run_dir=self.dir, policy=self.policy,
                         event=self.event, clock=self.clock, at=self.clock.now())
        self.on.close()
        return ev.AttemptEnded()

    def reattach(self, e: ev.Reattach, s: State) -> ev.Event:
        """`budget resume`: the run's instance, while it still runs."""
        live = self.led.instances(run_id=self.req.run_id, live=True)
        if not live:
            raise RunError(f"run {self.req.run_id} has no instance left to resume",
                           "start a new run; its finished samples are in the run directory")
        inst = next((i for i in live if i.id == s.iid), live[0])
        pid = inst.provider_id or s.pid
        if pid is None:
            found = registry.find_by_run(self.provider, self.req.run_id)
            if not found:
                raise RunError(f"run {self.req.run_id} never got an instance", "start a new run")
            pid = found[0]
        if inst.provider_id is None:
            self.led.set_instance(inst.id, provider_id=pid)
        if self.provider.status(pid).state not in ("pending", "running"):
            raise RunError(f"{pid} is gone: its watchdog ended it when the lease ran out",
                           f"the samples fetched before are in {self.dir}/out; start a new run for the rest")
        return ev.Found(iid=inst.id, pid=pid)

    def hand_over(self, e: ev.HandOver, s: State) -> ev.Event:
        return handover.hand_over(self.led, self.provider, self.req, s.iid, self.on, self.clock.now(), self.event)

    def teardown(self, e: ev.Teardown, s: State) -> ev.Event:
        """The run's end: the instance's (runner/run/teardown.py), then the run's own record."""
        stuck = None
        try:
            if s.iid is not None:
                try:
                    teardown.end(self.led, self.provider, self.led.instance(s.iid),
                                 how="done" if e.ending.state == "done" else "stop", run_dir=self.dir,
                                 policy=self.policy, event=self.event, clock=self.clock, session=self.on.session,
                                 fetch_lines=s.worker, reached=s.reached)
                except GpuBudgetError as err:  # the instance may still run: say so, keep it live in the ledger
                    stuck = err
            results.record_tasks(self.led, self.req.run_id, self.dir / "out", self.req.job)
        finally:
            self.on.close()
        final = e.ending.state if stuck is None else "failed"
        reason = e.ending.reason if stuck is None else f"could not terminate {s.pid}: {stuck.message}"
        done, total = progress.count(self.dir, self.req.run_id)
        self.led.update_run(self.req.run_id, state=final, phase=final, reason=reason, finished_at=self.clock.now(),
                            samples_done=done, samples_total=total)
        return ev.TornDown(stuck=stuck)

    # -------------------------------------------------------------------------------- on the instance

    def connect(self, e: ev.Connect, s: State) -> ev.Event:
        try:
            self.on.session = self.provider.session(s.pid, self.req.run_id, timeout_s=10.0)
        except NotReadyError as err:
            return ev.NotReady(why=err.message, refused=isinstance(err, RefusedError))
        except RemoteError as err:
            try:
                state = self.provider.status(s.pid).state
            except GpuBudgetError:
                state = "unknown"
            if state in GONE_STATES:
                return ev.Gone(state=state)
            return ev.Failed(error=err)
        address = self.on.session.address
        if s.phase == "booting":
            self.led.set_instance(s.iid, state="running")
            self.event("connected", address)
        elif s.phase == "reconnecting":
            self.event("ssh", "reconnected")
        return ev.Connected()

    def disconnect(self, e: ev.Disconnect, s: State) -> None:
        self.on.close()

    def arm(self, e: ev.Arm, s: State) -> ev.Event:
        # the boot lease covered the wait for SSH; from now on the watchdog holds the instance to the normal
        # lease (shortening is safe in this order: the instance first, then the ledger)
        lease = min(self.led.instance(s.iid).lease_until, self.clock.now() + self.policy.lease_s)
        self.on.arm(lease, self._grace())
        self.led.set_instance(s.iid, lease_until=float(int(lease)))
        if s.phase == "resuming" and s.worker:
            self.event("reattached", self.on.session.address)
        return ev.Armed()

    def bootstrap(self, e: ev.Bootstrap, s: State) -> ev.Event:
        return self.on.start_bootstrap() if self.on.needs_bootstrap() else ev.BootstrapDone(rc=0)

    def poll_bootstrap(self, e: ev.PollBootstrap, s: State) -> ev.Event:
        return self.on.poll_bootstrap()

    def push(self, e: ev.Push, s: State) -> ev.Event:
        self.on.push()
        return ev.Pushed()

    def start_worker(self, e: ev.StartWorker, s: State) -> ev.Event:
        self.on.start_worker()
        return ev.Started()

    def restart_worker(self, e: ev.RestartWorker, s: State) -> ev.Event:
        if e.kill:
            self.on.kill_worker()
        self.event("worker", f"{e.why}; restarting it ({e.nth} of {e.of})")
        self.on.start_worker()
        return ev.Started()

    def poll(self, e: ev.Poll, s: State) -> ev.Event:
        return self.on.poll()

    def inspect(self, e: ev.Inspect, s: State) -> ev.Event:
        return self.on.inspect()

    # -------------------------------------------------------------------------------- helpers

    def _boot(self) -> Policy:
        """The policy of an instance until its session opens: a lease that also covers the wait for SSH."""
        return dataclasses.replace(self.policy, lease_s=self.policy.lease_s + self.req.ssh_wait_s)

    def _ceiling(self, choice):
        """A spot instance may never cost more than the price the ledger bills it at: EC2 charges the market price
        up to MaxPrice, so the guard's figures stay an upper bound of the real bill."""
        return choice.price_original_h if self.req.spot and choice.offer.currency == "USD" else None

    def _grace(self) -> int:
        """The worker's flush time after a lease runs out: half the teardown allowance (the power-off the rest)."""
        return max(1, int(self.policy.teardown_s / 2))
