"""Printers of `budget eval`: the live line driven by the worker's status.json, and the results table of
its summary.json."""

from __future__ import annotations

from ..units import duration
from . import base
from .base import Bar, Clock, Table, gib

_METRICS = (("bleu4", "BLEU-4"), ("cider_d", "CIDEr-D"), ("anls", "ANLS"), ("keyword_recall", "keyword recall"),
            ("consistency", "consistency"), ("agreement", "agreement"), ("mean_frames", "frames/clip"),
            ("exact_match", "exact match"), ("char_accuracy", "char accuracy"))


class EvalProgress(Bar):
    """A progress bar on stderr driven by the worker's status.json."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Clock(),
                                 TextColumn("eta"), Clock(remaining=True), console=base.err, transient=False)
        self.bar = self.progress.add_task("starting", total=None)

    def update(self, status: dict) -> None:
        tasks = {k: t for k, t in (status.get("tasks") or {}).items() if "skipped" not in t}
        done = sum(t.get("done", 0) for t in tasks.values())
        total = sum(t.get("total", 0) for t in tasks.values()) or None
        mem = status.get("peak_memory_bytes") or 0
        desc = f"{status.get('phase', '?')}"
        if status.get("task"):
            desc += f" {status['task']}"
        desc += f" | {status.get('tokens', {}).get('decode', 0)} tokens out | peak {gib(mem)}"
        reps = status.get("replicas") or []
        if reps:  # budget eval --replicas: each GPU's shard and phase
            desc += " | " + " ".join(f"gpu{r.get('gpu')}:" + ("lost" if r.get("lost") else
                                     f"s{r['shard']} {r.get('phase') or '?'}" if r.get("shard") is not None else "idle")
                                     for r in reps)
        self.progress.update(self.bar, description=desc, completed=done, total=total)


def eval_summary(summary: dict, out_dir: str) -> None:
    out = base.out
    for ld in summary.get("loads") or []:
        mem = ", ".join(f"{m['device']} {gib(m['bytes'])}" + (f" ({m['source']})" if m.get("source") else "")
                        for m in ld["memory_after_load"]) or "not reported"
        if ld.get("engine", "hf") == "hf":
            shard = f" (shard {ld['shard']})" if ld.get("shard") is not None else ""
            out.print(f"loaded {summary.get('model')} as {ld['quantization']} ({ld['dtype']}) on {ld['device']}{shard} in "
                      f"{duration(ld['load_s'])}; weights {gib(ld['footprint_bytes'])}; memory after load: {mem}")
        else:
            started = (f" (install {duration(ld['install_s'])}, start {duration(ld['start_s'])})"
                       if ld.get("start_s") is not None else "")
            out.print(f"{summary.get('model')} as {ld['quantization']} served by {ld['engine']}: ready in "
                      f"{duration(ld['load_s'])}{started}; memory: {mem}")
    t = Table(title=f"Results in {out_dir}", title_justify="left")
    for col in ("task", "kind", "done", "ok", "OOM", "errors", "metric", "samples/s", "decode tok/s", "peak memory"):
        t.add_column(col, justify="left" if col in ("task", "kind", "metric") else "right")
    for name, s in (summary.get("tasks") or {}).items():
        metric = ", ".join(f"{label} {s[k]:.3f}" for k, label in _METRICS if s.get(k) is not None)
        if s.get("skipped"):
            metric = f"skipped: {s['skipped']}"
        if s.get("largest_ok"):
            metric = "largest OK " + "x".join(map(str, s["largest_ok"])) + " px"
        t.add_row(name, s["kind"], f"{s['done']}/{s.get('total') or s['done']}", str(s["ok"]), str(s["oom"]),
                  str(s.get("errors", 0)), metric or "-",
                  "-" if s.get("samples_per_s") is None else f"{s['samples_per_s']:.2f}",
                  "-" if s.get("decode_tokens_per_s") is None else f"{s['decode_tokens_per_s']:.1f}",
                  "-" if s.get("peak_memory_bytes") is None else gib(s["peak_memory_bytes"]))
    out.print(t)
    state = "complete" if summary.get("complete") else f"stopped: {summary.get('stopped')}" if summary.get("stopped") \
        else "incomplete"
    out.print(f"{state}; elapsed {duration(summary.get('elapsed_s', 0))} (attempt {summary.get('attempt')}); "
              f"per-sample lines in {out_dir}/results/")


def compare_summary(o) -> None:
    """`budget compare`: each task's answers and metric, the calls billed and what they cost against the cap."""
    from planner.money import display

    out = base.out
    t = Table(title=f"{o.reference}: run {o.run_id}" + (" (resumed)" if o.resumed else ""), title_justify="left")
    for col in ("task", "kind", "cases", "ok", "errors", "metric"):
        t.add_column(col, justify="left" if col in ("task", "kind", "metric") else "right")
    for name, s in o.tasks.items():
        metric = ", ".join(f"{label} {s[k]:.3f}" for k, label in _METRICS if s.get(k) is not None)
        t.add_row(name, s["kind"], f"{s.get('done', 0)}/{s.get('total') or s.get('done', 0)}", str(s.get("ok", 0)),
                  str(s.get("errors", 0)), metric or "-")
    out.print(t)
    for name, why in o.skipped.items():
        out.print(f"{name}: not compared ({why})")
    c = o.calls
    out.print(f"{c['calls']} calls billed: {c['prompt_tokens']} prompt + {c['completion_tokens']} completion tokens; "
              f"spent {display(o.spent_cny)} of the {display(o.cap_cny, 2)} CNY cap; {o.state}"
              + (f" ({o.reason})" if o.reason else "") + f"; lines in {o.run_dir}/out/results/")
    out.print(f"beside your quantizations: `budget report --plan {o.run_id.rsplit('-', 3)[0]}`")
