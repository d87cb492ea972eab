"""`budget compare PLAN --reference MODEL`: the plan's quality tasks - the first N cases of each - asked of a
hosted model (GPT-4o, Qwen-VL-Max through DashScope's compatible mode, any OpenAI-compatible server) through
the worker's own task loop and client (images as data URIs, multi-turn as real histories, the plan's generation
settings), run in this process. It is a run in the ledger like any other (provider `api`, its offer the model),
and every call is metered: reserved at its bound before it is sent, billed from the usage the server returns
at the prices recorded when the run started (runner/money/calls.py); the cap stops it before a call it could not
pay, every finished case kept. Rerun, the same comparison resumes its run: finished cases are the worker's
result lines in the run directory and are never sent (nor paid for) again. The key is read from the environment
when the client is made and written nowhere: not in job.json, the ledger, a log or a report."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from planner import apiprices
from planner.errors import GpuBudgetError, InputError
from planner.money import display

from . import home as homes
from . import jobs
from .clock import SYSTEM, Clock
from .money import calls, results
from .money.guard import Policy
from .procs import proc_start
from .run.request import new_run_id

NOT_COMPARED = {"memory_sweep": "measures this machine's memory, not a model's answers",
                "fp16_verify": "compares a quantization with its own 16-bit answers"}
DEFAULT_URL = "https://api.openai.com/v1"
PROVIDER = "api"
MODEL = re.compile(r"[^\s\x00-\x1f\x7f]{1,256}")  # an API's model id (or a served path): printable, no spaces


class CompareFailed(GpuBudgetError):
    exit_code = 1


@dataclass
class Ask:
    plan: Path
    reference: str
    base_url: str = DEFAULT_URL
    api_key_env: str | None = None
    cases: int = 5
    yuan: Decimal | None = None
    pool: str = "default"
    concurrency: int = 4
    free: bool = False  # an endpoint that charges nothing (no price needed)


@dataclass
class Outcome:
    reference: str
    run_id: str
    run_dir: Path
    state: str
    reason: str
    cap_cny: Decimal
    spent_cny: Decimal
    calls: dict
    tasks: dict
    skipped: dict = field(default_factory=dict)
    resumed: bool = False
    why: str = ""  # what stopped it, in words


class LedgerMeter:
    """The client's meter (runner/worker/client.py): each call's bound reserved in the ledger before it is sent,
    billed from its usage, released, or billed at its bound when its outcome is unknown; and every answer paid
    for, journaled in `answers` (the run directory's answers.jsonl, fsynced before the call is billed) so that a
    rerun never pays for the same call twice - a multi-turn conversation the cap cut short is resumed from its
    journaled turns. The client calls it from its threads: one lock keeps the ledger's connection to one
    transaction at a time."""

    def __init__(self, led, run_id: str, price: apiprices.ApiPrice, rate: calls.Rate, clock: Clock, policy: Policy,
                 answers: Path):
        self.led, self.run_id, self.price, self.rate, self.clock, self.policy = led, run_id, price, rate, clock, policy
        self.lock = threading.Lock()
        self.refused = None  # the guard's Decision that stopped the run, and why in words
        self.why = ""
        self.path = answers
        self.answers = _journaled(answers)

    def answered(self, key: str) -> dict | None:
        return self.answers.get(key)

    def reserve(self, call) -> int:
        from .worker.client import OverBudget

        tokens = apiprices.prompt_bound(self.price, call.text_bytes, call.messages, call.images)
        bound = apiprices.call_bound(self.price, tokens, call.max_tokens) * self.rate.cny_per_unit
        with self.lock:
            d, cid = calls.reserve(self.led, self.run_id, self.rate, bound, self.clock.now(), self.policy,
                                   f"<= {tokens} prompt + {call.max_tokens} completion tokens")
        if cid is None:
            self.refused = d
            self.why = (f"the next call may cost up to {display(bound, 4)} CNY and {display(d.committed_cny - bound, 4)} "
                        f"of the {display(d.cap_cny)} CNY cap is spent or reserved" if d.reason == "budget"
                        else "`budget stop` asked for it")
            raise OverBudget(self.why)
        return cid

    def bill(self, cid: int, prompt_tokens: int, completion_tokens: int, answer: dict | None = None) -> None:
        with self.lock:
            if answer is not None and answer.get("key"):
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(answer, ensure_ascii=False) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                self.answers[answer["key"]] = answer
            calls.bill(self.led, cid, prompt_tokens, completion_tokens, self.clock.now())

    def release(self, cid: int, why: str) -> None:
        with self.lock:
            calls.release(self.led, cid, self.clock.now(), why)

    def unknown(self, cid: int, why: str) -> None:
        with self.lock:
            calls.bill_bound(self.led, cid, self.clock.now(), why)


def _journaled(path: Path) -> dict[str, dict]:
    """The answers paid for in earlier runs (a torn last line - a kill mid-write - is skipped)."""
    out: dict[str, dict] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for raw in lines:
        try:
            a = json.loads(raw)
        except ValueError:
            continue
        if isinstance(a, dict) and isinstance(a.get("key"), str) and isinstance(a.get("text"), str) and all(
                isinstance(a.get(k), int) and not isinstance(a.get(k), bool) for k in ("prompt_tokens", "completion_tokens")) \
                and isinstance(a.get("ttft_s"), int | float):
            out[a["key"]] = a
    return out


def fingerprint(ask: Ask, job: dict) -> str:
    """What makes two comparisons the same (a rerun resumes it): the job - plan, cases, endpoint, model - but not
    how many calls are in flight."""
    engine = {k: v for k, v in job.get("engine", {}).items() if k != "concurrency"}
    return hashlib.sha256(json.dumps({"job": jobs.fingerprint(dict(job, engine=engine)), "reference": ask.reference},
                                     sort_keys=True).encode()).hexdigest()[:16]


def build_job(ask: Ask, home: Path, catalog) -> tuple[object, dict, dict]:
    """The plan, the job the worker's loop runs (the quality tasks, first `cases` of each, on the endpoint), and
    the tasks left out with why."""
    from planner.plans import load_plan, plan_file

    from .engines import engine_of

    plan = load_plan(ask.plan)
    skipped = {t.name: NOT_COMPARED[t.kind] for t in plan.tasks if t.kind in NOT_COMPARED}
    kept = [t for t in plan.tasks if t.kind not in NOT_COMPARED]
    if not kept:
        raise InputError(f"plan {plan.name} has no task a hosted model can answer (only "
                         f"{', '.join(sorted({t.kind for t in plan.tasks}))})", "add a caption, document, digits, "
                         "multiturn_vqa, poetry or video task to the plan")
    engine = engine_of("server", ask.base_url, ask.reference, ask.api_key_env, ask.concurrency, here=True)
    compared = plan.model_copy(update={"tasks": kept})
    quant = next((q for q in plan.quantizations if q in ("bf16", "fp16")), "bf16")  # a label: the API's is its own
    job = jobs.build(compared, plan_file(ask.plan), catalog, home, quantization=quant, limit=ask.cases,
                     engine=engine, run_id="compare")
    return plan, job, skipped


def _find(led, plan: str, reference: str, key: str) -> dict | None:
    """An earlier run of the same comparison not yet done (stopped by its cap, interrupted, failed): resumed."""
    for r in led.db.execute("SELECT * FROM runs WHERE provider=? AND plan=? AND offer=? ORDER BY created_at DESC",
                            (PROVIDER, plan, reference)):
        try:
            said = json.loads((Path(r["dir"]) / "compare.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(said, dict) and said.get("fingerprint") == key and r["state"] != "done":
            return dict(r)
    return None


def run(ask: Ask, home: Path, catalog, *, clock: Clock = SYSTEM, sleep: Callable[[float], None] | None = None,
        prices: dict | None = None) -> Outcome:
    """Compare, resuming an unfinished run of the same comparison. Refused before any call: an unknown model
    with no price, a key variable not set, a cap the pool cannot give."""
    from .worker.client import Unauthorized
    from .worker.run import EXIT_BUSY, Worker

    if not MODEL.fullmatch(ask.reference):
        raise InputError(f"--reference {ask.reference[:80]!r} is not a model name",
                         "the API's model id, e.g. --reference gpt-4o or --reference qwen-vl-max")
    prices = apiprices.load(home / "catalog") if prices is None else prices
    price = apiprices.price_of(ask.reference, prices, ask.free)
    rate = calls.Rate(ask.reference, price.input_per_1m, price.output_per_1m, price.currency,
                      catalog.cny(Decimal(1), price.currency))
    if not price.free and not ask.api_key_env:
        raise InputError(f"{ask.reference} is a priced model: its endpoint needs a key",
                         "pass --api-key-env NAME (the variable holding the key), or --free for an endpoint "
                         "that charges nothing")
    plan, job, skipped = build_job(ask, home, catalog)
    key = fingerprint(ask, job)
    homes.writable(home)
    led = homes.ledger(home, clock)
    try:
        prior = _find(led, plan.name, ask.reference, key)
        cap = ask.yuan if ask.yuan is not None else (Decimal(prior["cap_cny"]) if prior else Decimal(str(plan.budget_yuan)))
        pool_cap = led.ensure_pool(ask.pool, cap, clock.now(), "created by budget compare")
        if pool_cap < cap:
            raise InputError(f"--yuan {cap} is over pool {ask.pool!r}'s cap ({pool_cap} CNY): the printed cap must be "
                             "the enforced one", f"lower --yuan, or raise the pool: `budget pool set-cap {ask.pool} {cap}`")
        if prior is not None:
            run_id, run_dir = prior["id"], Path(prior["dir"])
            for cid in calls.open_calls(led, run_id):  # its controller died during these calls
                calls.bill_bound(led, cid, clock.now(), "its controller died during the call")
            led.update_run(run_id, state="running", phase="running", reason=None, finished_at=None, cap_cny=str(cap),
                           stop_requested=0)
        else:
            run_id = new_run_id(plan.name, clock.now())
            run_dir = homes.directory(home, run_id)
            (run_dir / "out").mkdir(parents=True)
            (run_dir / "compare.json").write_text(json.dumps(
                {"fingerprint": key, "reference": ask.reference, "base_url": ask.base_url, "cases": ask.cases,
                 "price": {"input_per_1m": str(price.input_per_1m), "output_per_1m": str(price.output_per_1m),
                           "currency": price.currency, "source": price.source, "date": price.date}}, indent=1))
            led.create_run(id=run_id, pool=ask.pool, plan=plan.name, plan_path=str(Path(ask.plan).resolve()),
                           provider=PROVIDER, offer=ask.reference, quantization=PROVIDER, spot=0, cap_cny=cap,
                           estimate_cny=None, estimate_s=None, dir=str(run_dir), created_at=clock.now())
            led.update_run(run_id, state="running", phase="running")
        led.update_run(run_id, controller_pid=os.getpid(), controller_start=proc_start(os.getpid()))
        out = run_dir / "out"
        job = dict(job, run_id=run_id)
        (out / "job.json").write_text(json.dumps(job, indent=1, ensure_ascii=False), encoding="utf-8")
        meter = LedgerMeter(led, run_id, price, rate, clock, Policy(), run_dir / "answers.jsonl")
        serving = {"meter": meter, **({"sleep": sleep} if sleep is not None else {})}
        worker = Worker(out / "job.json", out, serving=serving)
        if worker.main() == EXIT_BUSY:  # another `budget compare` of the same comparison holds its directory
            raise InputError(f"run {run_id} is being compared by another process (its directory {out} is held)",
                             f"wait for it, or stop it: `budget stop {run_id}`")
        tasks = results.summarize(out, job)
        results.save_tasks(led, run_id, tasks)
        err = worker.error
        if isinstance(err, Unauthorized):
            state, reason = "failed", "the endpoint refused the key"
        elif err is not None:
            state, reason = "failed", f"{type(err).__name__}: {err}"[:300]
        elif worker.stop_reason:  # the cap (or `budget stop RUN`: the meter refuses every call after it), a signal
            state, reason = "stopped", worker.stop_reason
            if meter.refused is not None:
                state, reason = "stopped", "budget" if meter.refused.reason == "budget" else "user"
        else:
            state, reason = "done", ""
        led.update_run(run_id, state=state, phase=state, reason=reason, finished_at=clock.now(),
                       samples_done=sum(int(t.get("done") or 0) for t in tasks.values()),
                       samples_total=sum(int(t.get("total") or 0) for t in tasks.values()))
        if isinstance(err, Unauthorized):
            said = str(err).split("refused the key: ", 1)[-1]
            where = f"the key in ${ask.api_key_env}" if ask.api_key_env else "a call without a key"
            raise InputError(f"{ask.base_url} refused {where} ({said})",
                             "check the key (or pass --api-key-env NAME, the variable holding it); nothing was billed")
        return Outcome(ask.reference, run_id, run_dir, state, reason, cap, led.spent_run(run_id),
                       calls.totals(led, run_id), tasks, skipped, prior is not None, meter.why)
    finally:
        led.close()
