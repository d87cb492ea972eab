"""Printers of the run commands: what `budget run` is about to do (before it asks), its live line, a
detached or unattended hand-over, `status` (every run, or one in detail), `logs` and `stop`."""

from __future__ import annotations

import json
import sys

from ..units import duration, iso, money, printable
from . import base
from .base import Bar, Clock, Table, add_columns, billing, show, styled


def run_estimate(p) -> None:
    """What `budget run` is about to do, before it asks."""
    err = base.err
    rec, req = p.recommendation, p.request
    offer = req.offer
    err.print(f"run {req.run_id}: plan {p.plan.name} on {req.provider} "
              f"({rec.gpu} x{rec.gpu_count}, {offer['instance_type']}{', spot' if req.spot else ''}), "
              f"{req.quantization} on {rec.engine}", soft_wrap=True)
    err.print(f"  price {money(req.price_cny_h)} CNY/h, billed every "
              f"{billing(offer['billing_increment_s'], offer['billing_minimum_s'])}; estimate "
              f"{duration(rec.time.total_s)}, {money(rec.cost_cny)} CNY (planner's speed model: {rec.gpu} x{rec.gpu_count}; "
              f"a local run uses this machine's speed)", soft_wrap=True)
    pol = req.policy
    c = p.cap
    if c.new_pool:
        pool = f"new pool {c.pool!r}, created with the same cap"
    else:
        pool = (f"pool {c.pool!r}: cap {c.pool_cap_cny} CNY, {money(c.pool_spent_cny)} CNY spent, "
                f"{money(c.pool_left_cny)} CNY left")
    err.print(f"  cap {c.cap_cny} CNY for this run ({pool}); the guard decides every {duration(pol['tick_s'])}, plans "
              f"{duration(pol['teardown_s'])} to tear down and a reserve of {pol['reserve_cny']} CNY; the instance "
              f"stops itself if not heard from for {duration(pol['lease_s'])}", soft_wrap=True)
    if not c.new_pool and c.pool_left_cny < c.cap_cny:
        err.print(styled("  ", ("warning:", "yellow"), f" pool {c.pool!r} has {money(c.pool_left_cny)} CNY left, less "
                         "than this run's cap: the guard stops the run when the pool's money ends"), soft_wrap=True)
    if rec.cost_cny > p.cap_cny:
        err.print(styled("  ", ("warning:", "yellow"), f" the estimate ({money(rec.cost_cny)} CNY) is over the cap "
                         f"({p.cap_cny} CNY): the guard will stop the run when the money ends; finished samples are "
                         "kept"), soft_wrap=True)
    err.print(f"  results: {p.run_dir}/out", soft_wrap=True)


def cluster_estimate(b: dict) -> None:
    """What `budget run --provider ray` is about to do, before it asks (launch.Launch.banner)."""
    err = base.err
    hold = f"1 {b['gpu']} GPU" if b["kind"] == "gpu" else "1 CPU"
    err.print(f"run {b['run_id']}: plan {b['plan']} as {b['shards']} shard tasks on {b['where']} ({hold} each, at most "
              f"{b['slots']} at once; the cluster has {b['available']} {b['kind'].upper()}), {b['quantization']}",
              soft_wrap=True)
    err.print(f"  price {money(b['price_cny_h'])} CNY per task-hour, billed per second from a task's admission to its "
              "end; no estimate (the planner does not know this cluster's speed)", soft_wrap=True)
    pool = (f"new pool {b['pool']!r}, created with the same cap" if b["pool_cap_cny"] is None else
            f"pool {b['pool']!r}: cap {b['pool_cap_cny']} CNY, {money(b['pool_spent_cny'])} CNY spent, "
            f"{money(b['pool_left_cny'])} CNY left")
    err.print(f"  cap {b['cap_cny']} CNY for this run ({pool}); the guard decides every {duration(b['tick_s'])}; a task "
              f"not heard from for {duration(b['lease_s'])} stops itself (its lease, held on the cluster), within "
              f"{duration(b['teardown_s'])}", soft_wrap=True)
    if b["teardown_raised"]:
        err.print(styled("  ", ("note:", "yellow"), f" run.teardown_s raised to {duration(b['teardown_s'])}: a task's "
                         f"stop takes a {duration(b['grace_s'])} grace and three polls"), soft_wrap=True)
    if b["pool_cap_cny"] is not None and b["pool_left_cny"] < b["cap_cny"]:
        err.print(styled("  ", ("warning:", "yellow"), f" pool {b['pool']!r} has {money(b['pool_left_cny'])} CNY left, "
                         "less than this run's cap: the guard stops the run when the pool's money ends"), soft_wrap=True)
    err.print(f"  results: {b['results']}", soft_wrap=True)


def detached(run_id: str, pid: int) -> None:
    base.out.print(run_id)
    base.err.print(f"controller running in the background (pid {pid}); watch with `budget status {run_id}` or "
                   f"`budget logs {run_id} -f`, stop with `budget stop {run_id}`", soft_wrap=True)


def unattended(run_id: str) -> None:
    base.out.print(f"run {run_id} runs unattended: its instance holds the deadline its budget pays, uploads its "
                   "results to S3 and powers itself off when done - this machine may sleep")
    base.out.print(f"collect it (results, spend settled) with `budget status {run_id}`")


class RunProgress(Bar):
    """`budget run`'s live line on stderr: phase, samples, spend vs cap, ETA."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Clock(),
                                 console=base.err, transient=False)
        self.bar = self.progress.add_task("starting", total=None)

    def update(self, p: dict) -> None:
        desc = f"{p['phase']}"
        if p.get("task"):
            desc += f" {p['task']}"
        desc += f" | {money(p['spent_cny'])} of {money(p['cap_cny'])} CNY"
        if p.get("eta_s") is not None:
            desc += f" | eta {duration(p['eta_s'])}"
        self.progress.update(self.bar, description=desc, completed=p["done"], total=p["total"] or None)


def runs_table(rows: list[dict]) -> None:
    if not rows:
        base.err.print("no runs yet; start one with `budget run PLAN`")
        return
    t = Table(title="Runs (newest first)")
    money_cols = ("spent CNY", "cap CNY")
    add_columns(t, ("run", "state", "provider", "offer", "quant", "samples", *money_cols, "started"),
                whole=("run", *money_cols), right=("samples", *money_cols))
    for r in rows:
        state = r["state"] + (f": {r['reason']}" if r.get("reason") and r["state"] == "stopped" else "")
        if r["state"] in ("created", "running") and not r["controller_alive"]:
            state += " (no controller: `budget stop` settles it)"
        t.add_row(r["id"], state, r["provider"], r["offer"], r["quantization"],
                  f"{r['samples_done']}/{r['samples_total']}", money(r["spent_cny"]), money(r["cap_cny"]),
                  iso(r["created_at"]))
    show(base.out, t)


def run_detail(d: dict) -> None:
    out = base.out
    state = d["state"] + (f": {d['reason']}" if d.get("reason") else "")
    if d["state"] in ("created", "running") and not d["controller_alive"]:
        state += " - no controller is driving it; `budget stop` terminates and settles it"
    out.print(styled(f"run {d['id']}  ", (state, "bold"), f"  (phase {d['phase']})"), soft_wrap=True)
    out.print(f"  plan {d['plan']} ({d['plan_path']}), {d['provider']} {d['offer']}, {d['quantization']}"
              f"{', spot' if d['spot'] else ''}", soft_wrap=True)
    est = f"estimate {money(d['estimate_cny'])} CNY / {duration(d['estimate_s'])}" if d.get("estimate_cny") else ""
    out.print(f"  spent {money(d['spent_cny'])} CNY of a {money(d['cap_cny'])} CNY cap; pool {d['pool']}: "
              f"{money(d['pool_spent_cny'])} of {money(d['pool_cap_cny'])} CNY; {est}", soft_wrap=True)
    out.print(f"  samples {d['samples_done']}/{d['samples_total']}; started {iso(d['created_at'])}, "
              f"finished {iso(d.get('finished_at'))}; results in {d['dir']}/out", soft_wrap=True)
    if d.get("shards"):  # a ray run: each instance is a task on a node of the cluster
        t = Table(title="Tasks on the cluster")
        add_columns(t, ("task", "shard", "node", "state", "spent CNY", "price CNY/h", "started", "ended"),
                    right=("spent CNY", "price CNY/h"))
        for r in d["shards"]:
            t.add_row(r["task"], r["shard"], r["node"], r["state"], money(r["spent_cny"]), money(r["price_cny_h"]),
                      iso(r["started_at"]), iso(r["ended_at"]))
        show(out, t)
    elif d["instances"]:
        t = Table(title="Instances")
        for col in ("id", "state", "type", "price CNY/h", "billed every", "launched", "ended"):
            t.add_column(col)
        for i in d["instances"]:
            t.add_row(str(i["provider_id"] or "-"), i["state"], i["instance_type"], money(i["price_cny_h"]),
                      billing(i["increment_s"], i["minimum_s"]), iso(i["launched_at"]), iso(i["ended_at"]))
        show(out, t)
    if d.get("replicas"):  # a worker per GPU on the instance, each on its shard (runner/worker/replicas.py)
        t = Table(title="Replicas")
        add_columns(t, ("replica", "GPU", "shard", "phase", "started"), right=("started",))
        for r in d["replicas"]:
            t.add_row(str(r["replica"]), r["gpu"], "-" if r["shard"] is None else str(r["shard"]),
                      "lost (its shard went to another)" if r["lost"] else r["phase"] or "-", f"{r['runs']} shard(s)")
        show(out, t)
    from ..money.ledger import FINAL

    lines = task_lines(d["tasks"], finished=d["state"] in FINAL)
    if lines:
        t = Table(title="Tasks")
        add_columns(t, ("task", "kind", "done", "ok", "metric"), right=("done", "ok"))
        for line in lines:
            t.add_row(*line)
        show(out, t)


def task_lines(tasks: list[dict], finished: bool) -> list[tuple[str, str, str, str, str]]:
    """Each task of a run as the end of `budget run` and `budget status RUN` print it: name, kind, done (of its
    total), ok and its metric ("CIDEr-D 0.8123"), from the ledger's task summaries. Summaries are written when
    a run ends: a run still going has none (its progress is the samples line above) and shows no metric."""
    from ..money.quality import METRIC

    lines = []
    for x in tasks:
        try:
            s = json.loads(x["summary"]) if isinstance(x["summary"], str | bytes) else x["summary"]
        except ValueError:
            s = None
        s = s if isinstance(s, dict) else {}
        total = s.get("total")
        done = f"{x['samples']}/{total}" if isinstance(total, int) and not isinstance(total, bool) else str(x["samples"])
        key, label = METRIC.get(x["kind"], (None, None))
        metric = ""
        if s.get("skipped"):
            metric = f"skipped: {printable(str(s['skipped']))[:80]}"
        elif key and finished:
            metric = f"{label} {_figure(s.get(key))}"
        lines.append((x["task"], x["kind"], done, str(x["ok"]), metric))
    return lines


def _figure(v) -> str:
    """A metric as the cost of quality prints it (4 decimals); '-' when the task has none (nothing scored)."""
    if isinstance(v, bool) or v is None:
        return "-"
    if isinstance(v, int | float):
        return f"{float(v):.4f}"
    return printable(str(v))[:40]


def log_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def stopped(run: dict) -> None:
    base.out.print(f"run {run['id']}: {run['state']}" + (f" ({run['reason']})" if run.get("reason") else ""))
