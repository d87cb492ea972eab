"""`budget report`'s files: CSV (Excel and LibreOffice open it as it is: UTF-8 with a BOM, one header row,
ISO dates, amounts as fixed 2-decimal strings; the cost of quality's rows carry a `section` column, "quality"
or "reference"), JSON (money as decimal strings) and one self-contained HTML file (no network: styles inline,
charts rendered by matplotlib to embedded PNG). matplotlib is the optional `report` extra; without it
`--format html` says what to install. Every file is written to a temporary name beside the target and
renamed, so a failed report leaves nothing behind.

The HTML reads as a finance document at 1280 px without a sideways scrollbar: human headers (HEADERS, units in
the header), money right-aligned in tabular figures, and wide tables split in two - the reader's columns,
then a details table with every other key of the same rows (JSON and CSV keep every key as it is)."""

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
    """The view's table: charge lines, groups, or the cost-of-quality rows - each row with a `section`
    ("quality"), followed by the reference comparison's rows (section "reference") where the document has
    one: one header row over the union of their keys, so the csv module, Excel and pandas read it as is."""
    if doc["view"] == "quality":
        rows = [{"section": "quality", **r} for r in doc["rows"]]
        note = (doc.get("reference") or {}).get("note")
        rows += [{"section": "reference", **r, "note": note} for r in (doc.get("reference") or {}).get("rows", [])]
        cols = list(dict.fromkeys(k for r in rows for k in r)) if rows else ["section", "cost_cny"]
        return cols, rows
    if "groups" in doc:
        rows = [{doc["by"]: g["key"], **{k: v for k, v in g.items() if k != "key"}} for g in doc["groups"]]
    else:
        rows = doc["charges"]
    cols = list(rows[0]) if rows else ["amount_cny"]
    return cols, rows


def to_csv(doc: dict) -> bytes:
    """Amounts as the statement prints them (2 decimals, adding up to its total); the 1e-12 figures are
    JSON's, for scripts. The cost of quality's CSV starts with a `section` column: filter on it."""
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


STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1220px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;max-width:100%}
td,th{padding:.25em .5em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}td.w{overflow-wrap:anywhere}
th{font-weight:600;background:#f6f6f6}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.money,.k{white-space:nowrap}td.w{white-space:normal}figure{margin:1em 0}img{max-width:100%}ul.headlines{padding-left:1.2em}
.muted{color:#666}h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}h3{font-size:1em}"""

# every document key a table shows -> its header (units in the header, never in the cells)
HEADERS = {
    "#": "#", "item": "Item", "value": "Value", "section": "Section", "run": "Run", "pool": "Pool", "plan": "Plan",
    "quant": "Quantization", "provider": "Provider", "region": "Region", "instance_type": "Instance type",
    "gpu": "GPU", "gpu_count": "GPU count", "spot": "Spot", "started_at": "Started (UTC)", "ended_at": "Ended (UTC)",
    "rate_cny_h": "Rate (CNY/h)", "rate_original_h": "Rate at launch (offer currency/h)", "currency": "Currency",
    "spot_market_original_h": "Spot market price (offer currency/h)", "fx_cny_per_unit": "FX (CNY per unit)",
    "increment_s": "Billing increment (s)", "minimum_s": "Billing minimum (s)", "billed_s": "Billed (s)",
    "billed": "Billed (h:mm:ss)", "amount_cny": "Amount (CNY)", "exact_cny": "Exact amount (CNY)",
    "status": "Status", "reason": "Reason", "share_pct": "Share (%)", "day": "Day", "week": "Week (ISO)",
    "month": "Month", "task": "Task", "state": "State", "estimate_cny": "Estimate (CNY)", "actual_cny": "Actual (CNY)",
    "variance_cny": "Variance (CNY)", "variance_pct": "Variance (%)", "kind": "Kind", "runs": "Runs",
    "samples": "Samples answered", "done": "Samples done", "metric": "Metric", "metric_key": "Metric key",
    "change_vs_16bit_pct": "Change vs 16-bit (%)", "cost_cny": "Cost (CNY)", "exact_cost_cny": "Exact cost (CNY)",
    "cny_per_sample": "Cost per sample (CNY)", "cny_per_1k_tokens": "Cost per 1k tokens (CNY)",
    "decode_tokens": "Generated tokens", "tokens_per_s": "Tokens/s", "samples_per_s": "Samples/s",
    "peak_memory_gib": "Peak memory (GiB)", "agreement_16bit": "Agreement with 16-bit",
    "agreement_samples": "Agreement samples", "cases": "Cases", "reference": "Reference model",
    "reference_value": "Reference value", "score_pct": "Score vs reference (%)", "cny_per_case": "Cost per case (CNY)",
    "reference_cny_per_case": "Reference cost per case (CNY)", "cost_pct": "Cost vs reference (%)", "note": "Note"}
UNITS = (("_cny_h", " (CNY/h)"), ("_cny", " (CNY)"), ("_pct", " (%)"), ("_gib", " (GiB)"), ("_s", " (s)"))
# the reader's columns; every other key of a row goes to the details table below it (nothing dropped)
CHARGES = ["#", "run", "plan", "quant", "provider", "gpu", "started_at", "ended_at", "billed", "rate_cny_h",
           "amount_cny", "status"]
QUALITY = ["task", "quant", "metric", "value", "change_vs_16bit_pct", "samples", "cost_cny", "cny_per_sample",
           "cny_per_1k_tokens", "agreement_16bit"]
REFERENCE = ["task", "metric", "cases", "quant", "value", "reference", "reference_value", "score_pct", "cny_per_case",
             "reference_cny_per_case", "cost_pct"]
FOLDED = {"gpu_count": "gpu", "reason": "status"}  # shown inside another column's cell


def header(key: str) -> str:
    """A document key as a column's header: the mapping above; a key it lacks is spelled out all the same."""
    if key in HEADERS:
        return HEADERS[key]
    unit = next(((key[: -len(s)], u) for s, u in UNITS if key.endswith(s)), (key, ""))
    words = unit[0].replace("_", " ").strip() or key
    return words[:1].upper() + words[1:] + unit[1]


def _money(key: str) -> bool:
    return ("cny" in key or key.endswith("original_h")) and not key.startswith("fx_")


def _show(key: str, r: dict) -> str:
    v = r.get(key)
    if key == "gpu" and "gpu_count" in r:
        return f"{v}\u00a0x{r['gpu_count']}" if v else "-"
    if key == "status" and r.get("reason"):
        return f"{v}: {r['reason']}"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if key.endswith("_at") and isinstance(v, str):
        return v.replace("T", " ").removesuffix("Z")  # the header says UTC; a space lets it wrap
    if _money(key) and _numeric(v) and len((v + ".").split(".")[1]) < 2:
        return v + ("0" if "." in v else ".00")  # 5 -> 5.00, 6.5 -> 6.50: padded, never rounded
    return "-" if v is None or v == "" else str(v)


def _table(cols: list[str], rows: list[dict]) -> str:
    """Human headers; money and figures right-aligned in tabular figures (money never wrapped)."""
    cells = [{c: _show(c, r) for c in cols} for r in rows]
    num = {c for c in cols if _money(c) or c == "billed" or any(
        isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) or _numeric(r.get(c)) for r in rows)}
    cls = {c: ("n money" if _money(c) else "n") if c in num else "" for c in cols}
    head = "".join(f'<th class="{cls[c]}" scope="col">{html.escape(header(c))}</th>' for c in cols)
    body = "".join("<tr>" + "".join(_td(cls[c], x[c]) for c in cols) + "</tr>" for x in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(cls: str, text: str) -> str:
    """A cell with a word too long for a column (a run id, a long figure) may break anywhere; others break only
    between words (never at a word's hyphen: 2026-12-04, CIDEr-D, us-east-1 stay whole)."""
    words = text.split(" ")
    if max(map(len, words)) > 16:
        return f'<td class="{cls} w">{html.escape(text)}</td>'
    inner = " ".join(f"<span class='k'>{html.escape(w)}</span>" if "-" in w[1:] else html.escape(w) for w in words)
    return f'<td class="{cls}">{inner}</td>'


def _split(rows: list[dict], main: list[str], keys: list[str], what: str) -> str:
    """The reader's table (`main` columns), then a details table of every other key, joined on `keys`."""
    rows = [{"#": n, **r} for n, r in enumerate(rows, 1)] if "#" in main else rows
    have = list(dict.fromkeys(k for r in rows for k in r))
    shown = set(main) | {k for k, into in FOLDED.items() if into in main}
    rest = [k for k in have if k not in shown and k not in keys]
    out = _table([c for c in main if c in have], rows)
    if rest:
        out += f"<h3>{html.escape(what)}: details</h3>" + _table([k for k in keys if k in have] + rest, rows)
    return out


def _numeric(v) -> bool:
    return isinstance(v, str) and v.replace(".", "", 1).replace("-", "", 1).replace("+", "", 1).isdigit()


def _summary(doc: dict) -> list[dict]:
    period = f"{doc['period']['since'] or 'the first run'} to {doc['period']['until'] or doc['generated_at']}"
    b, v = doc["burn"], doc["variance"]
    items = [("Pools", ", ".join(doc["pools"])), ("Period", period), ("Cap", f"{doc['cap_cny']} CNY"),
             ("Opening balance", f"{doc['opening_balance_cny']} CNY"), ("Spent", f"{doc['spent_cny']} CNY"),
             ("Remaining", f"{doc['remaining_cny']} CNY"),
             ("Burn", (f"{b['average_cny_per_day'] or '-'} CNY/day on average; {b['current_cny_per_h']} CNY/h now "
                      f"({b['live_instances']} live)")),
             ("Runway", f"{doc['runway_h']} h at {doc['runway_basis']}" if doc["runway_h"] else doc["runway_basis"]),
             ("Variance vs plan (finished runs)",
              f"{v['finished_variance_cny']} CNY ({v['finished_variance_pct'] or '-'}%)")]
    return [{"item": k, "value": x} for k, x in items]


def _quality(quality: dict) -> list[str]:
    parts = ["<h2>Cost of quality</h2>", *(f"<p>{html.escape(v)}</p>" for v in quality["verdicts"]),
             _split(quality["rows"], QUALITY, ["task", "quant"], "Cost of quality"),
             f"<p class='muted'>{html.escape(quality['allocation'])}</p>"]
    ref = quality.get("reference")
    if ref and ref.get("rows"):
        parts += [f"<h2>Against reference models ({html.escape(', '.join(ref.get('models') or []))})</h2>",
                  "<ul class='headlines'>" + "".join(f"<li>{html.escape(h)}</li>" for h in ref.get("headlines") or [])
                  + "</ul>", _split(ref["rows"], REFERENCE, ["task", "quant", "reference"], "Reference comparison")]
        if ref.get("note"):
            parts.append(f"<p class='muted'>{html.escape(ref['note'])}</p>")
    return parts


def to_html(doc: dict, quality: dict | None, burn: list[tuple[float, float]]) -> bytes:
    cap = float(doc.get("cap_cny") or 0)  # a chart's line, not money
    figures = charts(doc, quality, burn, cap)
    parts = [(f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>gpubudget report</title>"
             f"<style>{STYLE}</style></head><body>"),
             f"<h1>gpubudget {'spend statement' if doc['view'] == 'statement' else 'cost of quality'}</h1>"]
    if doc["view"] == "statement":
        parts.append(_table(["item", "value"], _summary(doc)))
    for title, png in figures:
        parts.append(f"<figure><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>"
                     f"<figcaption class='muted'>{html.escape(title)}</figcaption></figure>")
    if doc["view"] == "statement":
        if "groups" in doc:
            cols, rows = rows_of(doc)
            parts.append(f"<h2>By {html.escape(header(doc['by']).lower())}</h2>" + _table(cols, rows))
        else:
            parts.append("<h2>Charges</h2>" + _split(doc["charges"], CHARGES, ["#", "run"], "Charges"))
        parts.append("<h2>Against the plan's estimate</h2>" + _table(
            ["run", "state", "estimate_cny", "actual_cny", "variance_cny", "variance_pct"], doc["variance"]["runs"]))
    if quality and quality["rows"]:
        parts += _quality(quality)
    parts.append(f"<p class='muted'>generated {html.escape(doc['generated_at'])} by gpubudget; amounts in CNY at the "
                 "prices recorded at launch; rounded half-even to the cent for display only.</p></body></html>")
    return "\n".join(parts).encode()
