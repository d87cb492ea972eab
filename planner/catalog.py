"""Bundled, date-stamped catalogs (GPU specs, Qwen3-VL architectures, offers, FX) and the user's
overrides in `$BUDGET_HOME/catalog/` (same layout: gpus.csv, fx.yaml, models/*.json,
offers/*.csv, offers/*.vms.csv).

Override rules: a user GPU or model replaces the bundled one of the same name; a provider that
appears in any user offer file replaces ALL bundled offers of that provider (an imported catalog
is a snapshot: instance types it no longer lists must disappear); FX rates replace per currency.

Offer files come in two layouts:
- ours (`*.csv`): provider,instance_type,gpu,gpu_count,price_per,price,spot_price,currency,region,
  billing_increment_s,billing_minimum_s,source,date. gpu_count may be a range "1-2" (one offer per
  count); price_per is `gpu` (price per card) or `instance` (price of the whole rig).
- SkyPilot's `vms.csv` (`*.vms.csv`): one row per availability zone, GpuInfo a quoted Python-dict
  literal, SpotPrice possibly empty, AcceleratorCount a float. Rows of one (type, region) collapse
  into one offer: the on-demand price, the cheapest zone's spot price.
Lines starting with `#` are comments; `# source:` and `# date:` lines stamp the file's rows.
"""

from __future__ import annotations

import ast
import csv
import functools
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from .architecture import load_config
from .errors import CatalogError, ModelConfigError
from .models import FxRate, Gpu, ModelSpec, Offer

OUR_COLUMNS = ["provider", "instance_type", "gpu", "gpu_count", "price_per", "price", "spot_price", "currency",
               "region", "billing_increment_s", "billing_minimum_s", "source", "date"]
SKYPILOT_COLUMNS = ["InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "GpuInfo",
                    "Price", "SpotPrice", "Region", "AvailabilityZone"]
# Billing rules of clouds whose SkyPilot catalogs carry none: (increment s, minimum s).
CLOUD_BILLING = {"aws": (1, 60), "gcp": (1, 60), "azure": (60, 60)}
CLOUD_CURRENCY = "USD"


@dataclass
class Problem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"

    @classmethod
    def of(cls, line: int, e: ValidationError) -> Problem:
        err = e.errors()[0]
        return cls(line, f"{'.'.join(map(str, err['loc']))}: {err['msg']}")


@dataclass
class SkyRow:
    """One usable row of a SkyPilot vms.csv, as written."""

    line: int
    instance_type: str
    accelerator: str
    count: int
    vcpus: float | None
    memory_gib: float | None
    gpu_memory_mib: int | None
    price: Decimal
    spot_price: Decimal | None
    region: str
    zone: str
    raw: dict[str, str] = field(default_factory=dict)


@dataclass
class Catalog:
    gpus: dict[str, Gpu]
    models: dict[str, ModelSpec]
    offers: list[Offer]
    fx: dict[str, FxRate]
    files: list[str] = field(default_factory=list)  # every file read, for `assumptions`

    def gpu(self, name: str, memory_mib: int | None = None) -> Gpu | None:
        """Resolve a GPU by name or alias (case/space/dash-insensitive). A bare family name that
        several sizes share ('A100') picks the size nearest `memory_mib`, else the first listed."""
        q = _norm(name)
        exact = [g for g in self.gpus.values() if q == _norm(g.name) or q in map(_norm, g.aliases)]
        family = [g for g in self.gpus.values() if _norm(g.name).startswith(q)]
        pool = family if memory_mib and len(family) > 1 else (exact or family)
        if not pool:
            return None
        if memory_mib:
            return min(pool, key=lambda g: abs(g.memory_mib - memory_mib))
        return pool[0]

    def model(self, name: str) -> ModelSpec:
        q = name.strip().lower()
        for key, spec in self.models.items() if q else ():
            short = key.lower().removesuffix("-instruct")
            if q in (key.lower(), spec.hf_id.lower(), short, short.removeprefix("qwen3-vl-")):
                return spec
        known = ", ".join(sorted(self.models))
        raise ModelConfigError(f"unknown model {name!r}",
                               f"known models: {known}; or pass --model-config PATH/config.json")

    def cny(self, amount: Decimal, currency: str) -> Decimal:
        rate = self.fx.get(currency.upper())
        if rate is None:
            raise CatalogError(f"no exchange rate for {currency} in the catalog",
                               f"add it with --fx {currency}=RATE or in $BUDGET_HOME/catalog/fx.yaml")
        return amount * rate.cny_per_unit


def _norm(s: str) -> str:
    return s.upper().replace(" ", "").replace("-", "").replace("_", "")


# --------------------------------------------------------------------------- file readers


def _split_comments(text: str) -> tuple[dict[str, str], list[tuple[int, str]]]:
    """Return the `# key: value` stamps and the non-comment lines with their 1-based numbers."""
    meta: dict[str, str] = {}
    lines: list[tuple[int, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            body = line.lstrip()[1:].strip()
            key, sep, value = body.partition(":")
            if sep and key.strip() in ("source", "date") and key.strip() not in meta:
                meta[key.strip()] = value.strip()
            continue
        if line.strip():
            lines.append((n, line))
    return meta, lines


def _rows(lines: list[tuple[int, str]], expected: list[str], path: str) -> list[tuple[int, dict[str, str]]]:
    if not lines:
        raise CatalogError(f"{path}: no header line", f"the first non-comment line must be: {','.join(expected)}")
    header_n, header = lines[0]
    cols = next(csv.reader([header]))
    missing = [c for c in expected if c not in cols]
    if missing:
        raise CatalogError(f"{path}:{header_n}: header lacks {', '.join(missing)}",
                           f"expected columns: {','.join(expected)}")
    # parse line by line so each row keeps its own number even with quoted commas
    out = []
    for n, line in lines[1:]:
        values = next(csv.reader([line]))
        out.append((n, dict(zip(cols, values)) if len(values) == len(cols) else {"__bad__": str(len(values))}))
    return out


def _good_rows(lines: list[tuple[int, str]], columns: list[str], path: str,
               problems: list[Problem]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows with the right number of fields; the others become Problems."""
    for n, r in _rows(lines, columns, path):
        if "__bad__" in r:
            problems.append(Problem(n, f"{r['__bad__']} fields, expected {len(columns)}"))
        else:
            yield n, r


def _dec(v: str, what: str, optional: bool = False) -> Decimal | None:
    v = v.strip()
    if not v and optional:
        return None
    try:
        d = Decimal(v)
    except InvalidOperation:
        raise ValueError(f"{what} {v!r} is not a number") from None
    if not d.is_finite() or d < 0:
        raise ValueError(f"{what} {v!r} must be a non-negative number")
    return d


def parse_offers_csv(text: str, path: str, gpus: Catalog | None = None) -> tuple[list[Offer], list[Problem]]:
    """Parse our offer layout. Returns the offers and one Problem per unusable row; with `gpus`,
    GPU names are resolved to the catalog's (unknown ones are Problems)."""
    meta, lines = _split_comments(text)
    offers: list[Offer] = []
    problems: list[Problem] = []
    for n, r in _good_rows(lines, OUR_COLUMNS, path, problems):
        try:
            lo, _, hi = r["gpu_count"].strip().partition("-")
            counts = range(int(lo), int(hi or lo) + 1)
            if r["price_per"] not in ("gpu", "instance"):
                raise ValueError(f"price_per must be 'gpu' or 'instance', got {r['price_per']!r}")
            per_gpu = r["price_per"] == "gpu"
            gpu = r["gpu"].strip()
            if gpus is not None:
                spec = gpus.gpu(gpu)
                if spec is None:
                    raise ValueError(f"unknown GPU {gpu!r}: add it to $BUDGET_HOME/catalog/gpus.csv")
                gpu = spec.name
            price, spot = _dec(r["price"], "price"), _dec(r["spot_price"], "spot_price", optional=True)
            if not counts:
                raise ValueError(f"gpu_count {r['gpu_count']!r} is an empty range")
            row = []  # all of a row's offers, or none of them
            for c in counts:
                k = c if per_gpu else 1
                row.append(Offer(
                    provider=r["provider"].strip(), instance_type=r["instance_type"].strip() + (f"x{c}" if len(counts) > 1 else ""),
                    gpu=gpu, gpu_count=c, price=price * k, spot_price=None if spot is None else spot * k,
                    currency=r["currency"].strip().upper(), region=r["region"].strip(),
                    billing_increment_s=int(r["billing_increment_s"]), billing_minimum_s=int(r["billing_minimum_s"]),
                    source=r["source"] or meta.get("source", path), date=r["date"] or meta.get("date", "")))
            offers += row
        except ValidationError as e:
            problems.append(Problem.of(n, e))
        except ValueError as e:
            problems.append(Problem(n, str(e)))
    return offers, problems


@functools.lru_cache(maxsize=4096)
def _gpu_info_mib(info: str) -> int:
    """Memory per GPU from SkyPilot's GpuInfo (a Python-dict literal, not JSON); rows of a
    catalog repeat a handful of these, hence the cache."""
    try:
        return int(ast.literal_eval(info)["Gpus"][0]["MemoryInfo"]["SizeInMiB"])
    except (ValueError, SyntaxError, KeyError, IndexError, TypeError, MemoryError, RecursionError):
        raise ValueError("GpuInfo is not a Python-dict literal with Gpus[0].MemoryInfo.SizeInMiB") from None


def parse_skypilot(text: str, path: str) -> tuple[list[SkyRow], list[Problem], dict[str, str]]:
    """Parse SkyPilot's vms.csv layout. Rows without a GPU, or with malformed fields, become
    Problems with their line numbers; nothing is dropped silently."""
    meta, lines = _split_comments(text)
    rows: list[SkyRow] = []
    problems: list[Problem] = []
    for n, r in _good_rows(lines, SKYPILOT_COLUMNS, path, problems):
        try:
            if not r["AcceleratorName"].strip():
                raise ValueError(f"{r['InstanceType']} has no accelerator (CPU instance), not usable for GPU plans")
            count_f = float(r["AcceleratorCount"])
            if count_f <= 0 or count_f != int(count_f):
                raise ValueError(f"AcceleratorCount {r['AcceleratorCount']!r} is not a whole number of GPUs"
                                 " (fractional GPUs are not modelled)")
            mem = _gpu_info_mib(r["GpuInfo"].strip()) if r["GpuInfo"].strip() else None
            price = _dec(r["Price"], "Price", optional=True)
            if price is None:
                raise ValueError(f"{r['InstanceType']} in {r['AvailabilityZone'] or r['Region']} has no on-demand Price")
            rows.append(SkyRow(
                line=n, instance_type=r["InstanceType"].strip(), accelerator=r["AcceleratorName"].strip(),
                count=int(count_f), vcpus=float(r["vCPUs"]) if r["vCPUs"].strip() else None,
                memory_gib=float(r["MemoryGiB"]) if r["MemoryGiB"].strip() else None, gpu_memory_mib=mem,
                price=price, spot_price=_dec(r["SpotPrice"], "SpotPrice", optional=True),
                region=r["Region"].strip(), zone=r["AvailabilityZone"].strip(), raw=r))
        except ValueError as e:
            problems.append(Problem(n, str(e)))
    return rows, problems, meta


def write_skypilot(rows: list[SkyRow], meta: dict[str, str]) -> str:
    """Serialise rows back to SkyPilot's layout (with our `# source/date` stamps)."""
    buf = io.StringIO()
    for k in ("source", "date"):
        if meta.get(k):
            buf.write(f"# {k}: {meta[k]}\n")
    w = csv.DictWriter(buf, SKYPILOT_COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r.raw)
    return buf.getvalue()


def skypilot_offers(rows: list[SkyRow], provider: str, meta: dict[str, str], gpus: Catalog | None,
                    path: str) -> tuple[list[Offer], list[Problem]]:
    """Collapse per-zone rows into one offer per (instance type, region)."""
    inc, minimum = CLOUD_BILLING.get(provider, (1, 60))
    grouped: dict[tuple[str, str], list[SkyRow]] = {}
    problems: list[Problem] = []
    names: dict[tuple[str, int | None], str | None] = {}
    for r in rows:
        key = (r.accelerator, r.gpu_memory_mib)
        if key not in names:
            g = gpus.gpu(*key) if gpus is not None else None
            names[key] = r.accelerator if gpus is None else (g.name if g is not None else None)
        if names[key] is None:
            problems.append(Problem(r.line, f"unknown GPU {r.accelerator!r}: add it to $BUDGET_HOME/catalog/gpus.csv"))
            continue
        grouped.setdefault((r.instance_type, r.region), []).append(r)
    offers = []
    for (itype, region), rs in grouped.items():
        spots = [r for r in rs if r.spot_price is not None]
        first = rs[0]
        gpu = names[(first.accelerator, first.gpu_memory_mib)]
        offers.append(Offer(
            provider=provider, instance_type=itype, gpu=gpu, gpu_count=first.count,
            price=max(r.price for r in rs), spot_price=min((r.spot_price for r in spots), default=None),
            currency=CLOUD_CURRENCY, region=region, zones=[r.zone for r in rs],
            billing_increment_s=inc, billing_minimum_s=minimum, gpu_memory_mib=first.gpu_memory_mib,
            vcpus=first.vcpus, memory_gib=first.memory_gib,
            source=meta.get("source", path), date=meta.get("date", "")))
    return offers, problems


def read_gpus(text: str, path: str) -> list[Gpu]:
    _, lines = _split_comments(text)
    out: list[Gpu] = []
    problems: list[Problem] = []
    for n, r in _good_rows(lines, ["name", "memory_mib", "bandwidth_gbs", "fp16_tflops", "bf16", "compute_capability"],
                           path, problems):
        try:
            out.append(Gpu(**{**r, "aliases": [a for a in r.get("aliases", "").split("|") if a],
                              "bf16": r["bf16"].strip().lower() in ("true", "yes", "1")}))
        except ValidationError as e:
            problems.append(Problem.of(n, e))
    if problems:
        raise CatalogError(f"{path}: {problems[0]}", "columns: name,aliases,memory_mib,bandwidth_gbs,fp16_tflops,"
                           "int8_tops,bf16,compute_capability,link,source,date")
    return out


def read_fx(text: str, path: str) -> list[FxRate]:
    try:
        data = yaml.safe_load(text) or []
        return [FxRate(**d) for d in data]
    except (yaml.YAMLError, ValidationError, TypeError) as e:
        raise CatalogError(f"{path}: not a valid FX file ({str(e).splitlines()[0]})",
                           "a YAML list of {currency, cny_per_unit, date, source}") from None


# --------------------------------------------------------------------------- loading


def _bundled() -> Path:
    return Path(str(resources.files("planner") / "data"))


def _offer_files(root: Path) -> list[Path]:
    d = root / "offers"
    return sorted(d.glob("*.csv")) if d.is_dir() else []


def _read_offer_file(p: Path, cat: Catalog) -> list[Offer]:
    text = p.read_text(encoding="utf-8")
    if p.name.endswith(".vms.csv"):
        rows, problems, meta = parse_skypilot(text, str(p))
        offers, more = skypilot_offers(rows, p.name.removesuffix(".vms.csv").split(".")[0], meta, cat, str(p))
        problems += more
    else:
        offers, problems = parse_offers_csv(text, str(p), cat)
    if problems:
        raise CatalogError(f"{p}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                           "fix or delete the row; `budget prices import` validates a file before adding it")
    return offers


def load_catalog(user_dir: Path | None = None) -> Catalog:
    """Load the bundled catalogs, then apply the user's overrides from `user_dir` if it exists."""
    base = _bundled()
    roots = [base] + ([user_dir] if user_dir is not None and user_dir.is_dir() else [])
    cat = Catalog(gpus={}, models={}, offers=[], fx={})
    for root in roots:
        for name, reader in (("gpus.csv", read_gpus), ("fx.yaml", read_fx)):
            p = root / name
            if p.is_file():
                cat.files.append(str(p))
                for item in reader(p.read_text(encoding="utf-8"), str(p)):
                    if isinstance(item, Gpu):
                        cat.gpus[item.name] = item
                    else:
                        cat.fx[item.currency.upper()] = item
        models_dir = root / "models"
        for p in sorted(models_dir.glob("*.json")) if models_dir.is_dir() else []:
            spec = load_config(p, name=p.stem, hf_id=f"Qwen/{p.stem}" if root == base and p.stem.startswith("Qwen") else "")
            cat.models[spec.name] = spec
    bundled = [o for p in _offer_files(base) for o in _read_offer_file(p, cat)]
    user: list[Offer] = []
    # a catalog is a snapshot: the newest file of a provider replaces its earlier ones (and the bundled offers)
    for p in sorted(_offer_files(user_dir) if len(roots) > 1 else [], key=lambda f: (f.stat().st_mtime_ns, f.name)):
        offers = _read_offer_file(p, cat)
        newer = {o.provider for o in offers}
        user = [o for o in user if o.provider not in newer] + offers
    user_providers = {o.provider for o in user}
    cat.offers = [o for o in bundled if o.provider not in user_providers] + user
    cat.files += [str(p) for r in roots for p in _offer_files(r)]
    return cat


@dataclass
class ImportResult:
    file_name: str  # under $BUDGET_HOME/catalog/offers/
    content: str  # the validated rows, in the input's layout, stamped with source and date
    offers: list[Offer]
    problems: list[Problem]
    rows_used: int


def prepare_import(text: str, path: str, fmt: str, provider: str | None, cat: Catalog, date: str) -> ImportResult:
    """Validate an offer file for the user catalog. Unusable rows come back as Problems with their
    line numbers; the content keeps only usable rows. Raises CatalogError when none is usable."""
    if fmt == "skypilot":
        prov = provider or "aws"
        rows, problems, meta = parse_skypilot(text, path)
        offers, more = skypilot_offers(rows, prov, meta, cat, path)
        bad = {p.line for p in more}
        good = [r for r in rows if r.line not in bad]
        stamp = {"source": meta.get("source") or f"imported from {Path(path).name}", "date": meta.get("date") or date}
        content, name, problems = write_skypilot(good, stamp), f"{prov}.vms.csv", problems + more
        used = len(good)
    elif fmt == "csv":
        offers, problems = parse_offers_csv(text, path, cat)
        if provider:
            offers = [o.model_copy(update={"provider": provider}) for o in offers]
        meta, lines = _split_comments(text)
        bad = {p.line for p in problems}
        buf = io.StringIO()
        buf.write(f"# source: {meta.get('source') or 'imported from ' + Path(path).name}\n# date: {meta.get('date') or date}\n")
        w = csv.DictWriter(buf, OUR_COLUMNS, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        used = 0
        for n, r in _rows(lines, OUR_COLUMNS, path):
            if n not in bad:
                w.writerow({**r, **({"provider": provider} if provider else {})})
                used += 1
        content, name = buf.getvalue(), "+".join(sorted({o.provider for o in offers})) + ".csv"
    else:
        raise CatalogError(f"unknown format {fmt!r}", "use --format skypilot or --format csv")
    problems.sort(key=lambda p: p.line)
    odd = sorted({o.provider for o in offers if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", o.provider)})
    if odd:  # the provider names the file under $BUDGET_HOME/catalog/offers/
        raise CatalogError(f"{path}: provider name {odd[0]!r} is not allowed", "use letters, digits, '.', '_' and '-' "
                           "(e.g. --provider myhost)")
    if not offers:
        first = f": {problems[0]}" if problems else ""
        raise CatalogError(f"{path}: no usable offer rows{first}",
                           "for SkyPilot's vms.csv use --format skypilot; for ours, see planner/data/offers/csdn.csv")
    return ImportResult(name, content, offers, problems, used)


def with_fx(cat: Catalog, overrides: list[str]) -> Catalog:
    """Apply `CUR=RATE` overrides (CNY per unit) from the command line."""
    for item in overrides:
        cur, sep, rate = item.partition("=")
        try:
            value = Decimal(rate)
            if not sep or not value.is_finite() or value <= 0:
                raise InvalidOperation
        except InvalidOperation:
            raise CatalogError(f"--fx {item!r}: expected CURRENCY=RATE with a positive rate, e.g. USD=7.2",
                               "the rate is CNY per unit of the currency") from None
        code = cur.strip().upper()
        used = {o.currency.upper() for o in cat.offers} | set(cat.fx)
        if code not in used:
            raise CatalogError(f"--fx {item!r}: no offer in the catalog is priced in {code or 'an empty currency'}",
                               "currencies in use: " + ", ".join(sorted(used)) + " (e.g. --fx USD=7.2)")
        cat.fx[code] = FxRate(currency=code, cny_per_unit=value, date="command line",
                                             source="--fx")
    return cat
