"""`budget report`'s files: CSV (Excel and LibreOffice open it as it is: UTF-8 with a BOM, one header row,
ISO dates, amounts as fixed 2-decimal strings), JSON (money as decimal strings) and one self-contained
HTML file (no network: styles inline, charts rendered by matplotlib to embedded PNG). matplotlib is the
optional `report` extra; without it `--format html` says what to install. Every file is written to a
temporary name beside the target and renamed, so a failed report leaves nothing behind."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import tempfile
from pathlib import Path

from planner.errors import InputError

from ..errors import ConfigError

FORMATS = ("table", "csv", "json", "html")


def check_out(out: Path | None) -> None:
    """Refuse an --out that cannot be written before any work (and before anything is written)."""
    if out is None:
        return
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise InputError(f"--out {out} is a directory", "pass a file name, e.g. --out report.html")
    if not parent.is_dir():
        raise InputError(f"--out {out}: the folder {parent} does not exist", "create it first, or pass another --out")
    try:  # the real test (permission bits say nothing to root, a read-only mount says nothing to them)
        with tempfile.NamedTemporaryFile(prefix=f".{out.name}.", dir=parent):
            pass
        if out.exists() and not os.access(out, os.W_OK):
            raise OSError("not writable")
    except OSError as e:
        raise InputError(f"--out {out} cannot be written ({e.strerror or e})",
                         "pass --out in a folder you can write to") from None


def write(out: Path, data: bytes) -> None:
    """Atomically (a temporary file beside it, renamed); a failure leaves nothing and says so (exit 2)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent if str(out.parent) else ".")
    except OSError as e:
        raise InputError(f"--out {out} cannot be written ({e.strerror or e})",
                         "pass --out in a folder you can write to") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # a report is a normal file (mkstemp makes it private)
        os.replace(tmp, out)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise InputError(f"--out {out} cannot be written ({e.strerror or e})",
                             "pass --out in a folder with room that you can write to") from None
        raise


# ---------------------------------------------------------------------------------------------- JSON, CSV


def to_json(doc: dict) -> bytes:
    return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode()


def rows_of(doc: dict) -> tuple[list[str], list[dict]]:
    """The view's table: charge lines, groups, or the cost-of-quality rows."""
    if doc["view"] == "quality":
        rows = doc["rows"]
    elif "groups" in doc:
        rows = [{doc["by"]: g["key"], **{k: v for k, v in g.items() if k != "key"}} for g in doc["groups"]]
    else:
        rows = doc["charges"]
    cols = list(rows[0]) if rows else ["amount_cny"]
    return cols, rows


def to_csv(doc: dict) -> bytes:
    """Amounts as the statement prints them (2 decimals, adding up to its total); the 1e-12 figures are
    JSON's, for scripts."""
    cols, rows = rows_of(doc)
    cols = [c for c in cols if not c.startswith("exact_")]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\r\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in cols})
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


# ---------------------------------------------------------------------------------------------- HTML


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("--format html draws its charts with matplotlib, which is not installed",
                          "pip install 'gpubudget[report]' (or pip install matplotlib), or use --format csv|json") \
            from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    fig.clf()
    return base64.b64encode(buf.getvalue()).decode()


def charts(doc: dict, quality: dict | None, burn: list[tuple[float, float]], cap: float) -> list[tuple[str, str]]:
    """(title, base64 PNG) for each chart the data supports."""
    import datetime as dt

    plt = _pyplot()
    out = []
    if len(burn) > 1:
        fig, ax = plt.subplots(figsize=(7.5, 3.4))
        xs = [dt.datetime.fromtimestamp(t, dt.UTC) for t, _ in burn]
        ax.step(xs, [v for _, v in burn], where="post", label="spent (CNY)")
        top = max(v for _, v in burn)
        if cap <= 4 * top or not top:
            ax.axhline(cap, color="tab:red", linestyle="--", label=f"cap {cap:,.2f} CNY")
            title = "Cumulative spend against the cap"
        else:  # drawn to scale the cap would flatten the spend into the axis
            title = f"Cumulative spend (the cap, {cap:,.2f} CNY, is off the scale)"
        ax.set(title=title, xlabel="time (UTC)", ylabel="CNY")
        ax.legend(loc="upper left")
        fig.autofmt_xdate()
        out.append(("Burn-down: cumulative spend against the cap", _png(fig)))
        plt.close(fig)
    spend: dict[str, float] = {}
    for c in doc.get("charges") or []:
        if c["provider"]:
            key = f"{c['provider']} {c['gpu'] + ' x' + str(c['gpu_count']) if c['gpu'] else c['instance_type']}"
            spend[key] = spend.get(key, 0.0) + float(c["amount_cny"])  # a chart's bar height, not money
    if spend:
        fig, ax = plt.subplots(figsize=(7.5, 0.5 + 0.45 * len(spend)))
        keys = sorted(spend, key=spend.get)
        ax.barh(keys, [spend[k] for k in keys], color="tab:blue")
        ax.set(title="Spend by provider and GPU", xlabel="CNY", ylabel="provider, GPU x count")
        out.append(("Spend by provider and GPU", _png(fig)))
        plt.close(fig)
    rows = [r for r in (quality or {}).get("rows", []) if r["value"] is not None and r["cny_per_sample"] is not None]
    if rows:
        fig, ax = plt.subplots(figsize=(7.5, 4))
        for task in dict.fromkeys(r["task"] for r in rows):
            pts = [r for r in rows if r["task"] == task]
            ax.scatter([float(r["cny_per_sample"]) for r in pts], [float(r["value"]) for r in pts],
                       label=f"{task} ({pts[0]['metric']})")
            for r in pts:
                ax.annotate(r["quant"], (float(r["cny_per_sample"]), float(r["value"])), textcoords="offset points",
                            xytext=(4, 4))
        ax.set(title="Cost vs quality per quantization", xlabel="CNY per answered sample",
               ylabel="metric (0-1 or CIDEr-D)")
        ax.legend(loc="best", fontsize="small")
        out.append(("Cost vs quality per quantization", _png(fig)))
        plt.close(fig)
    sweep = [s for s in (quality or {}).get("memory_sweep", []) if s.get("peak_memory_bytes")]
    if sweep:
        fig, ax = plt.subplots(figsize=(7.5, 3.6))
        for q in dict.fromkeys(s["quant"] for s in sweep):
            pts = sorted((s for s in sweep if s["quant"] == q), key=lambda s: s["resolution"][0] * s["resolution"][1])
            ax.plot([s["resolution"][0] * s["resolution"][1] / 1e6 for s in pts],
                    [s["peak_memory_bytes"] / 2**30 for s in pts], marker="o", label=q)
        ax.set(title="Peak memory by image resolution (memory sweep)", xlabel="image size (megapixels)",
               ylabel="peak memory (GiB)")
        ax.legend(loc="best")
        out.append(("Peak memory by resolution (memory sweep)", _png(fig)))
        plt.close(fig)
    return out


STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}figure{margin:1em 0}img{max-width:100%}
.muted{color:#666}h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}"""


def _table(cols: list[str], rows: list[dict]) -> str:
    num = {c for c in cols if any(isinstance(r.get(c), (int, float)) or _numeric(r.get(c)) for r in rows)}
    head = "".join(f'<th class="{"n" if c in num else ""}">{html.escape(c)}</th>' for c in cols)
    body = "".join("<tr>" + "".join(f'<td class="{"n" if c in num else ""}">{html.escape(_cell(r.get(c)))}</td>'
                                    for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _numeric(v) -> bool:
    return isinstance(v, str) and v.replace(".", "", 1).replace("-", "", 1).replace("+", "", 1).isdigit()


def _cell(v) -> str:
    return "" if v is None else str(v)


def to_html(doc: dict, quality: dict | None, burn: list[tuple[float, float]]) -> bytes:
    cap = float(doc.get("cap_cny") or 0)  # a chart's line, not money
    figures = charts(doc, quality, burn, cap)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>gpubudget report</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>gpubudget {'spend statement' if doc['view'] == 'statement' else 'cost of quality'}</h1>"]
    if doc["view"] == "statement":
        period = f"{doc['period']['since'] or 'the first run'} to {doc['period']['until'] or doc['generated_at']}"
        summary = [("pools", ", ".join(doc["pools"])), ("period", period), ("cap", f"{doc['cap_cny']} CNY"),
                   ("opening balance", f"{doc['opening_balance_cny']} CNY"), ("spent", f"{doc['spent_cny']} CNY"),
                   ("remaining", f"{doc['remaining_cny']} CNY"),
                   ("burn", f"{doc['burn']['average_cny_per_day'] or '-'} CNY/day on average; "
                            f"{doc['burn']['current_cny_per_h']} CNY/h now ({doc['burn']['live_instances']} live)"),
                   ("runway", f"{doc['runway_h']} h at {doc['runway_basis']}" if doc["runway_h"] else doc["runway_basis"]),
                   ("variance vs plan (finished runs)",
                    f"{doc['variance']['finished_variance_cny']} CNY ({doc['variance']['finished_variance_pct'] or '-'}%)")]
        parts.append(_table(["item", "value"], [{"item": k, "value": v} for k, v in summary]))
    for title, png in figures:
        parts.append(f"<figure><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>"
                     f"<figcaption class='muted'>{html.escape(title)}</figcaption></figure>")
    if doc["view"] == "statement":
        cols, rows = rows_of(doc)
        parts.append(f"<h2>{'By ' + doc['by'] if 'groups' in doc else 'Charges'} (CNY)</h2>" + _table(cols, rows))
        parts.append("<h2>Against the plan's estimate</h2>" + _table(
            ["run", "state", "estimate_cny", "actual_cny", "variance_cny", "variance_pct"], doc["variance"]["runs"]))
    if quality and quality["rows"]:
        parts.append("<h2>Cost of quality</h2>")
        parts += [f"<p>{html.escape(v)}</p>" for v in quality["verdicts"]]
        parts.append(_table([c for c in quality["rows"][0] if c != "metric_key"], quality["rows"]))
        parts.append(f"<p class='muted'>{html.escape(quality['allocation'])}</p>")
    parts.append(f"<p class='muted'>generated {html.escape(doc['generated_at'])} by gpubudget; amounts in CNY at the "
                 "prices recorded at launch; rounded half-even to the cent for display only.</p></body></html>")
    return "\n".join(parts).encode()
