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

Beside a provider's offers, `offers/<provider>.terms.csv` declares what its offers are beyond their price
(provider,fact,value,source,date - one fact a row, each with its source and date): `ProviderTerms`. A provider
declared `manual` (a person runs it: Colab's free notebook) is planned only when asked for by name; its limits
are shown with it. A user's terms file replaces the bundled one of that provider.

Offers are read in one columnar pass into an `OfferTable` (planner/offerfiles.py, planner/offers.py), and a
user file's offers are kept in an index beside it (planner/offerindex.py), so that a catalog of a million
SkyPilot rows loads in well under a second once `budget prices import` has read it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from . import offerindex
from .architecture import load_config
from .errors import CatalogError, ModelConfigError
from .models import FxRate, Gpu, ModelSpec, Offer
from .offerfiles import (  # noqa: F401 - CLOUD_*, Problem and the column lists are this module's API too
    CLOUD_BILLING,
    CLOUD_CURRENCY,
    OUR_COLUMNS,
    SKYPILOT_COLUMNS,
    Problem,
    collapse_skypilot,
    header,
    parse_ours,
    positions,
    records,
    skypilot_rows,
    split_comments,
)
from .offers import OfferTable

_LINE_BREAKS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")  # str.splitlines() breaks there too


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


class _GpuIndex:
    """Every GPU by its normalised name and aliases, and by every prefix of its name (a family: 'A100'), each
    list in catalog order; and the answers given so far."""

    __slots__ = ("exact", "family", "found", "of")

    def __init__(self, gpus: dict[str, Gpu]) -> None:
        self.of = (gpus, tuple(map(id, gpus.values())))
        self.exact: dict[str, list[Gpu]] = {}
        self.family: dict[str, list[Gpu]] = {}
        self.found: dict[tuple[str, int | None], Gpu | None] = {}
        for g in gpus.values():
            name = _norm(g.name)
            for key in dict.fromkeys([name, *map(_norm, g.aliases)]):
                self.exact.setdefault(key, []).append(g)
            for n in range(len(name) + 1):
                self.family.setdefault(name[:n], []).append(g)

    def fresh(self, gpus: dict[str, Gpu]) -> bool:
        return self.of[0] is gpus and self.of[1] == tuple(map(id, gpus.values()))


TERMS_COLUMNS = ["provider", "fact", "value", "source", "date"]
TERMS_SUFFIX = ".terms.csv"


@dataclass(frozen=True)
class Term:
    """One declared fact about a provider, with where it comes from and when it was read."""

    fact: str
    value: str
    source: str
    date: str

    def __str__(self) -> str:
        return f"{self.fact}: {self.value} (source: {self.source}; {self.date})"


@dataclass(frozen=True)
class ProviderTerms:
    """What a provider's offers are beyond their price (offers/<provider>.terms.csv). `manual`: a person runs it (a
    notebook) - nothing unattended, nothing this tool starts, watches or stops - so the optimizer plans its offers
    only when asked for by name, never ranking them over a rig that runs alone. `command`: how to use it and `then`:
    what the user does after it (`{plan}`: the plan's path). `session_hours`: the longest one session may run (None:
    unknown). `limits`: every fact to show, each with its source and date."""

    provider: str
    manual: bool = False
    command: str = ""
    then: str = ""
    session_hours: float | None = None
    limits: tuple[Term, ...] = ()

    def usage(self, plan: str) -> str:
        return self.command.replace("{plan}", plan)

    def steps(self, plan: str) -> list[str]:
        return [self.then.replace("{plan}", plan)] if self.then else []

    def notes(self, hours: float, plan: str) -> list[str]:
        """What a recommendation of this provider says beside its figures: its limits, each with its source and
        date, whether the estimate fits one session, and how to use it."""
        out = []
        if self.manual:
            out.append(f"{self.provider} is run by a person, not by this tool: nothing here starts, watches or stops "
                       "it, and it is never ranked over a rig that runs alone unless asked for (--provider "
                       f"{self.provider})")
        out += [str(t) for t in self.limits]
        if self.session_hours is not None:
            fits = hours <= self.session_hours
            out.append(f"estimated {hours:.2f} h: {'within' if fits else 'over'} the {self.session_hours:g} h one "
                       "session may last at most" + ("" if fits else "; rerun the notebook's run cell in a new session "
                                                     "(the worker resumes where it stopped), or shrink the plan"))
        if self.command:
            out.append(f"use it: {self.usage(plan)}")
        return out


def read_terms(text: str, path: str) -> ProviderTerms:
    """A provider's terms file; CatalogError for a row that is not one fact of one provider with its source and date."""
    _, lines = split_comments(text)
    problems: list[Problem] = []
    rows = list(_good_rows(lines, TERMS_COLUMNS, path, problems))
    hint = "columns: " + ",".join(TERMS_COLUMNS) + " (see planner/data/offers/colab.terms.csv)"
    if problems:
        raise CatalogError(f"{path}: {problems[0]}", hint)
    providers = {r["provider"].strip() for _, r in rows}
    if len(providers) != 1:
        raise CatalogError(f"{path}: a terms file declares one provider, found {len(providers)}", hint)
    terms: dict = {"provider": providers.pop()}
    limits = []
    for n, r in rows:
        fact, value = r["fact"].strip(), r["value"].strip()
        if not fact or not value or not r["source"].strip() or not r["date"].strip():
            raise CatalogError(f"{path}: line {n}: every fact needs a value, a source and a date", hint)
        if fact == "manual":
            if value not in ("yes", "no"):
                raise CatalogError(f"{path}: line {n}: manual is yes or no, got {value!r}", hint)
            terms["manual"] = value == "yes"
        elif fact in ("command", "then"):
            terms[fact] = value
        else:
            if fact == "session_hours":
                try:
                    hours = None if value == "unknown" else float(value)
                except ValueError:
                    hours = -1.0
                if hours is not None and not (0 < hours < 10**4):
                    raise CatalogError(f"{path}: line {n}: session_hours is a number of hours or unknown, got "
                                       f"{value!r}", hint)
                terms["session_hours"] = hours
                fact, value = "session length", (f"at most {value} h" if hours is not None else value)
            limits.append(Term(fact, value, r["source"].strip(), r["date"].strip()))
    return ProviderTerms(**terms, limits=tuple(limits))


@dataclass
class Catalog:
    gpus: dict[str, Gpu]
    models: dict[str, ModelSpec]
    offers: Sequence[Offer]  # an OfferTable as loaded; any sequence of Offer objects will do
    fx: dict[str, FxRate]
    files: list[str] = field(default_factory=list)  # every file read, for `assumptions`
    terms: dict[str, ProviderTerms] = field(default_factory=dict)  # declared per provider (offers/*.terms.csv)
    _index: _GpuIndex | None = field(default=None, init=False, repr=False, compare=False)

    def manual(self) -> set[str]:
        """Providers a person runs (declared `manual`): planned only when asked for by name."""
        return {name for name, t in self.terms.items() if t.manual}

    def gpu(self, name: str, memory_mib: int | None = None) -> Gpu | None:
        """Resolve a GPU by name or alias (case/space/dash-insensitive). A bare family name that
        several sizes share ('A100') picks the size nearest `memory_mib`, else the first listed.
        One dictionary look-up: the names are indexed once (again when `gpus` changes)."""
        idx = self._index
        if idx is None or not idx.fresh(self.gpus):
            idx = self._index = _GpuIndex(self.gpus)
        key = (name, memory_mib)
        if key in idx.found:
            return idx.found[key]
        q = _norm(name)
        exact, family = idx.exact.get(q, []), idx.family.get(q, [])
        pool = family if memory_mib and len(family) > 1 else (exact or family)
        got = None
        if pool:
            got = min(pool, key=lambda g: abs(g.memory_mib - memory_mib)) if memory_mib else pool[0]
        idx.found[key] = got
        return got

    def resolver(self):
        """(name as written, MiB) -> the catalog's GPU name, or None: what the offer parsers take."""
        def resolve(name: str, memory_mib: int | None) -> str | None:
            g = self.gpu(name, memory_mib)
            return None if g is None else g.name
        return resolve

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


def column(offers: Iterable[Offer], name: str) -> list:
    """One field of every offer: a column of an OfferTable, or read off Offer objects."""
    return offers.cols[name] if isinstance(offers, OfferTable) else [getattr(o, name) for o in offers]


# --------------------------------------------------------------------------- file readers


def _rows(lines: list[tuple[int, str]], expected: list[str], path: str) -> list[tuple[int, dict[str, str]]]:
    cols = header(lines, expected, path)
    return [(n, dict(zip(cols, values)) if len(values) == len(cols) else {"__bad__": str(len(values))})
            for n, values in records(lines[1:])]


def _good_rows(lines: list[tuple[int, str]], columns: list[str], path: str,
               problems: list[Problem]) -> Iterable[tuple[int, dict[str, str]]]:
    """Rows with the right number of fields; the others become Problems."""
    for n, r in _rows(lines, columns, path):
        if "__bad__" in r:
            problems.append(Problem(n, f"{r['__bad__']} fields, expected {len(columns)}"))
        else:
            yield n, r


def _named(table: OfferTable, names: dict[tuple[str, int | None], str | None]) -> OfferTable:
    """`table` with the catalog's GPU names (`names`: (name as written, MiB) -> catalog name)."""
    if not names or all(k[0] == v for k, v in names.items()):
        return table
    return table.with_gpus(names)


def _resolve(table: OfferTable, resolve) -> dict[tuple[str, int | None], str | None]:
    return {k: resolve(*k) for k in table.gpu_keys()}


def parse_offers_csv(text: str, path: str, gpus: Catalog | None = None) -> tuple[OfferTable, list[Problem]]:
    """Parse our offer layout. Returns the offers and one Problem per unusable row; with `gpus`,
    GPU names are resolved to the catalog's (unknown ones are Problems)."""
    table, problems, _ = parse_ours(text, path, None if gpus is None else gpus.resolver())
    return (table if gpus is None else _named(table, _resolve(table, gpus.resolver()))), problems


def parse_skypilot(text: str, path: str) -> tuple[list[SkyRow], list[Problem], dict[str, str]]:
    """Parse SkyPilot's vms.csv layout. Rows without a GPU, or with malformed fields, become
    Problems with their line numbers; nothing is dropped silently."""
    problems: list[Problem] = []
    meta, cols, rows = skypilot_rows(text, path, problems)
    out = [SkyRow(n, *values, raw=dict(zip(cols, raw))) for n, raw, values in rows]
    return out, problems, meta


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
                    path: str) -> tuple[OfferTable, list[Problem]]:
    """Collapse per-zone rows into one offer per (instance type, region)."""
    problems: list[Problem] = []
    values = ((r.line, None, (r.instance_type, r.accelerator, r.count, r.vcpus, r.memory_gib, r.gpu_memory_mib,
                              r.price, r.spot_price, r.region, r.zone)) for r in rows)
    resolve = None if gpus is None else gpus.resolver()
    table = collapse_skypilot(values, provider, meta, path, resolve, problems)
    return (table if gpus is None else _named(table, _resolve(table, resolve))), problems


def read_gpus(text: str, path: str) -> list[Gpu]:
    _, lines = split_comments(text)
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
    return sorted(p for p in d.glob("*.csv") if not p.name.endswith(TERMS_SUFFIX)) if d.is_dir() else []


def _terms_files(root: Path) -> list[Path]:
    d = root / "offers"
    return sorted(d.glob("*" + TERMS_SUFFIX)) if d.is_dir() else []


def _provider_of(p: Path) -> str:
    return p.name.removesuffix(".vms.csv").split(".")[0]


def _parse_offer_file(text: str, p: Path, resolve) -> tuple[OfferTable, dict, list[Problem]]:
    """The offers of file `p` with GPU names as written, the catalog's name of each, and the problems."""
    problems: list[Problem] = []
    if p.name.endswith(".vms.csv"):
        meta, _, rows = skypilot_rows(text, str(p), problems)
        more: list[Problem] = []
        table = collapse_skypilot(rows, _provider_of(p), meta, str(p), resolve, more)
        problems += more
    else:
        table, problems, _ = parse_ours(text, str(p), resolve)
    return table, _resolve(table, resolve), problems


def _read_offer_file(p: Path, cat: Catalog, indexed: bool = False) -> OfferTable:
    """The offers of file `p`; `indexed` (a user's file): from its index when it has a fresh one (and
    writing one when it has none)."""
    resolve = cat.resolver()
    if indexed:
        table = offerindex.load(p, str(p))
        if table is not None:
            names = _resolve(table, resolve)
            if None not in names.values():
                return _named(table, names)
            # a GPU the catalog no longer has: the file itself says which rows, with their lines
    table, names, problems = _parse_offer_file(p.read_text(encoding="utf-8"), p, resolve)
    if problems:
        raise CatalogError(f"{p}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                           "fix or delete the row; `budget prices import` validates a file before adding it")
    if indexed:
        try:
            offerindex.save(p, table, str(p))
        except OSError:  # a read-only catalog, a full disk: the next plan reads the file again
            pass
    return _named(table, names)


def _without(table: OfferTable, providers: set[str]) -> OfferTable:
    if not providers.intersection(table.cols["provider"]):
        return table
    return table.take(i for i, pr in enumerate(table.cols["provider"]) if pr not in providers)


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
    bundled = [_read_offer_file(p, cat) for p in _offer_files(base)]
    # a catalog is a snapshot: the newest file of a provider replaces its earlier ones (and the bundled offers)
    user_files = sorted(_offer_files(user_dir) if len(roots) > 1 else [], key=lambda f: (f.stat().st_mtime_ns, f.name))
    user = [_read_offer_file(p, cat, indexed=True) for p in user_files]
    later: set[str] = set()
    for i in range(len(user) - 1, -1, -1):
        providers = set(user[i].cols["provider"])
        user[i] = _without(user[i], later)
        later |= providers
    cat.offers = OfferTable.concat([_without(t, later) for t in bundled] + user)
    cat.files += [str(p) for r in roots for p in _offer_files(r)]
    for root in roots:  # a user's terms of a provider replace the bundled ones
        for p in _terms_files(root):
            t = read_terms(p.read_text(encoding="utf-8"), str(p))
            cat.terms[t.provider] = t
            cat.files.append(str(p))
    return cat


@dataclass
class ImportResult:
    file_name: str  # under $BUDGET_HOME/catalog/offers/
    content: str  # the validated rows, in the input's layout, stamped with source and date
    offers: Sequence[Offer]
    problems: list[Problem]
    rows_used: int
    # the offers the stored file reads back as (GPU names as written), given the path it is stored at; None
    # when only reading it tells
    stored: Callable[[str], OfferTable | None] = lambda path: None


def _stamped(meta: dict[str, str]) -> str:
    return "".join(f"# {k}: {meta[k]}\n" for k in ("source", "date") if meta.get(k))


def _import_skypilot(text: str, path: str, provider: str, cat: Catalog, date: str) -> ImportResult:
    problems: list[Problem] = []
    meta, cols, rows = skypilot_rows(text, path, problems)
    stamp = {"source": meta.get("source") or f"imported from {Path(path).name}", "date": meta.get("date") or date}
    buf = io.StringIO()
    buf.write(_stamped(stamp))
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SKYPILOT_COLUMNS)
    at = positions(cols, SKYPILOT_COLUMNS)
    used = 0

    def keep(raw: list[str]) -> None:
        nonlocal used
        w.writerow([raw[j] for j in at])
        used += 1
    more: list[Problem] = []
    resolve = cat.resolver()
    table = collapse_skypilot(rows, provider, meta, path, resolve, more, keep)
    content = buf.getvalue()

    def stored(own: str) -> OfferTable | None:
        """The same offers with the stored file's stamps and provider: exactly what reading it gives, as every
        row is one line (csv writes what it read); a value with a line break of str.splitlines(): read it."""
        if _LINE_BREAKS.search(content):
            return None
        m, _ = split_comments(_stamped(stamp))
        n = len(table)
        return OfferTable({**table.cols, "provider": [_provider_of(Path(own))] * n,
                           "source": [m.get("source", own)] * n, "date": [m.get("date", "")] * n},
                          table.givens, table.kinds)  # its shapes computed when it is indexed
    return ImportResult(f"{provider}.vms.csv", content, _named(table, _resolve(table, resolve)), problems + more,
                        used, stored)


def _import_ours(text: str, path: str, provider: str | None, cat: Catalog, date: str) -> ImportResult:
    meta, _ = split_comments(text)
    buf = io.StringIO()
    buf.write(f"# source: {meta.get('source') or 'imported from ' + Path(path).name}\n# date: {meta.get('date') or date}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(OUR_COLUMNS)
    used = 0

    def keep(n: int, cols: list[str], raw: list[str]) -> None:
        nonlocal used
        r = dict(zip(cols, raw))
        w.writerow([provider if provider and c == "provider" else r.get(c, "") for c in OUR_COLUMNS])
        used += 1
    resolve = cat.resolver()
    table, problems, _ = parse_ours(text, path, resolve, keep)
    offers = _named(table, _resolve(table, resolve))
    if provider:
        offers = offers.with_column("provider", [provider] * len(offers))
    content = buf.getvalue()

    def stored(own: str) -> OfferTable | None:  # read it, as a plan would
        again, bad, _ = parse_ours(content, own, None)
        return None if bad else again
    name = "+".join(sorted(set(offers.cols["provider"]))) + ".csv"
    return ImportResult(name, content, offers, problems, used, stored)


def prepare_import(text: str, path: str, fmt: str, provider: str | None, cat: Catalog, date: str) -> ImportResult:
    """Validate an offer file for the user catalog. Unusable rows come back as Problems with their
    line numbers; the content keeps only usable rows. Raises CatalogError when none is usable."""
    if fmt == "skypilot":
        if provider and "." in provider:  # it names the file, and a file's provider ends at its first '.'
            raise CatalogError(f"{path}: provider name {provider!r} is not allowed for a SkyPilot file",
                               "its file is PROVIDER.vms.csv, read back up to the first '.': use letters, digits, "
                               "'_' and '-' (e.g. --provider my-cloud)")
        r = _import_skypilot(text, path, provider or "aws", cat, date)
    elif fmt == "csv":
        r = _import_ours(text, path, provider, cat, date)
    else:
        raise CatalogError(f"unknown format {fmt!r}", "use --format skypilot or --format csv")
    r.problems.sort(key=lambda p: p.line)
    odd = sorted({p for p in column(r.offers, "provider") if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", p)})
    if odd:  # the provider names the file under $BUDGET_HOME/catalog/offers/
        raise CatalogError(f"{path}: provider name {odd[0]!r} is not allowed", "use letters, digits, '.', '_' and '-' "
                           "(e.g. --provider myhost)")
    if not r.offers:
        first = f": {r.problems[0]}" if r.problems else ""
        raise CatalogError(f"{path}: no usable offer rows{first}",
                           "for SkyPilot's vms.csv use --format skypilot; for ours, see planner/data/offers/csdn.csv")
    return r


def save_index(dest: Path, r: ImportResult) -> None:
    """After `r.content` is written to `dest`: keep its offers in the index beside it, so that plans load them
    without reading the file. The index is a cache: when only reading the file tells what it holds, or the
    index cannot be written (a full disk), the first plan reads the file and writes it."""
    table = r.stored(str(dest))
    if table is not None:
        try:
            offerindex.save(dest, table, str(dest))
        except OSError:
            pass


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
        used = {c.upper() for c in set(column(cat.offers, "currency"))} | set(cat.fx)
        if code not in used:
            raise CatalogError(f"--fx {item!r}: no offer in the catalog is priced in {code or 'an empty currency'}",
                               "currencies in use: " + ", ".join(sorted(used)) + " (e.g. --fx USD=7.2)")
        cat.fx[code] = FxRate(currency=code, cny_per_unit=value, date="command line",
                                             source="--fx")
    return cat
