"""Offer files read in one columnar pass: SkyPilot's `vms.csv` and our own layout (planner/catalog.py's
docstring has both), checked field by field by hand - no pydantic per row - with the rules and the
messages a validated `Offer` gives, into an `OfferTable` (planner/offers.py). Each usable row costs a few
comparisons; each unusable one becomes a `Problem` with its line number, as before.

`planner/offerindex.py` keeps what a file parsed to beside it, so that a million-row catalog loads in a
fraction of a second after its one parse (at `budget prices import`).
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from .errors import CatalogError
from .offers import FIELDS, OfferTable

OUR_COLUMNS = ["provider", "instance_type", "gpu", "gpu_count", "price_per", "price", "spot_price", "currency",
               "region", "billing_increment_s", "billing_minimum_s", "source", "date"]
SKYPILOT_COLUMNS = ["InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "GpuInfo",
                    "Price", "SpotPrice", "Region", "AvailabilityZone"]
# Billing rules of clouds whose SkyPilot catalogs carry none: (increment s, minimum s).
CLOUD_BILLING = {"aws": (1, 60), "gcp": (1, 60), "azure": (60, 60)}
CLOUD_CURRENCY = "USD"
# The fields a row of each layout sets (the others keep Offer's defaults), as the validated offers had them.
OURS_GIVEN = frozenset(FIELDS) - {"zones", "gpu_memory_mib", "vcpus", "memory_gib"}
SKY_GIVEN = frozenset(FIELDS)
UNKNOWN_GPU = "unknown GPU {!r}: add it to $BUDGET_HOME/catalog/gpus.csv"

Resolve = Callable[[str, "int | None"], "str | None"]  # (GPU name as written, its MiB) -> catalog name or None


@dataclass
class Problem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"

    @classmethod
    def of(cls, line: int, e) -> Problem:
        """From a pydantic ValidationError: its first error, `field: message`."""
        err = e.errors()[0]
        return cls(line, f"{'.'.join(map(str, err['loc']))}: {err['msg']}")


def split_comments(text: str) -> tuple[dict[str, str], list[tuple[int, str]]]:
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


def header(lines: list[tuple[int, str]], expected: list[str], path: str) -> list[str]:
    """The columns of the first non-comment line; CatalogError when it lacks any of `expected`."""
    if not lines:
        raise CatalogError(f"{path}: no header line", f"the first non-comment line must be: {','.join(expected)}")
    header_n, text = lines[0]
    cols = next(csv.reader([text]))
    missing = [c for c in expected if c not in cols]
    if missing:
        raise CatalogError(f"{path}:{header_n}: header lacks {', '.join(missing)}",
                           f"expected columns: {','.join(expected)}")
    return cols


def records(lines: list[tuple[int, str]]) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each line, every line parsed on its own (a row keeps its own number even
    with quoted commas; a quote left open ends with its line). One csv reader reads them all; where a
    record ran past its line, or the reader refused one, those lines are read again one at a time."""
    texts = [t for _, t in lines]
    reader = csv.reader(texts)
    done = 0
    try:
        for values in reader:
            if reader.line_num == done + 1:
                yield lines[done][0], values
            else:
                for n, t in lines[done:reader.line_num]:
                    yield n, next(csv.reader([t]))
            done = reader.line_num
    except csv.Error:
        for n, t in lines[done:]:
            yield n, next(csv.reader([t]))


def dec(v: str, what: str, optional: bool = False) -> Decimal | None:
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


class _Decimals(dict):
    """`dec` for the values of one column, each distinct text parsed once (a catalog repeats its prices)."""

    def __init__(self, what: str, optional: bool) -> None:
        super().__init__()
        self.what, self.optional = what, optional

    def __missing__(self, v: str) -> Decimal | None:
        d = self[v] = dec(v, self.what, self.optional)  # a bad value raises and is not kept
        return d


def positions(cols: list[str], names: list[str]) -> list[int]:
    """Where each of `names` is in a row (the last of repeated columns, as a dict of the row keeps)."""
    last = {c: i for i, c in enumerate(cols)}
    return [last[c] for c in names]


# --------------------------------------------------------------------------- SkyPilot's vms.csv


@functools.lru_cache(maxsize=4096)
def gpu_info_mib(info: str) -> int:
    """Memory per GPU from SkyPilot's GpuInfo (a Python-dict literal, not JSON); rows of a
    catalog repeat a handful of these, hence the cache."""
    import ast

    try:
        return int(ast.literal_eval(info)["Gpus"][0]["MemoryInfo"]["SizeInMiB"])
    except (ValueError, SyntaxError, KeyError, IndexError, TypeError, MemoryError, RecursionError):
        raise ValueError("GpuInfo is not a Python-dict literal with Gpus[0].MemoryInfo.SizeInMiB") from None


SkyValues = tuple  # (instance type, accelerator, count, vcpus, memory GiB, GPU MiB, price, spot, region, zone)


def skypilot_rows(text: str, path: str, problems: list[Problem]
                  ) -> tuple[dict[str, str], list[str], Iterator[tuple[int, list[str], SkyValues]]]:
    """The stamps of a vms.csv, its header's columns and its usable rows as (line, fields as written, checked
    values), lazily. Rows without a GPU or with a malformed field become Problems (appended as the rows are
    read)."""
    meta, lines = split_comments(text)
    cols = header(lines, SKYPILOT_COLUMNS, path)
    return meta, cols, _sky_values(lines[1:], cols, problems)


def _sky_values(lines, cols, problems) -> Iterator[tuple[int, list[str], SkyValues]]:
    width, expected = len(cols), len(SKYPILOT_COLUMNS)
    it_, an_, ac_, vc_, mg_, gi_, pr_, sp_, rg_, az_ = positions(cols, SKYPILOT_COLUMNS)
    prices, spots = _Decimals("Price", True), _Decimals("SpotPrice", True)
    counts: dict[str, int] = {}
    for n, r in records(lines):
        if len(r) != width:
            problems.append(Problem(n, f"{len(r)} fields, expected {expected}"))
            continue
        try:
            itype, accel, zone, region = r[it_], r[an_], r[az_], r[rg_]
            if not accel.strip():
                raise ValueError(f"{itype} has no accelerator (CPU instance), not usable for GPU plans")
            count = counts.get(r[ac_])
            if count is None:
                count_f = float(r[ac_])
                if not math.isfinite(count_f) or count_f <= 0 or count_f != int(count_f):
                    raise ValueError(f"AcceleratorCount {r[ac_]!r} is not a whole number of GPUs"
                                     " (fractional GPUs are not modelled)")
                count = counts[r[ac_]] = int(count_f)
            info = r[gi_].strip()
            mem = gpu_info_mib(info) if info else None
            price = prices[r[pr_]]
            if price is None:
                raise ValueError(f"{itype} in {zone or region} has no on-demand Price")
            vcpus = float(r[vc_]) if r[vc_].strip() else None
            memory = float(r[mg_]) if r[mg_].strip() else None
            yield n, r, (itype.strip(), accel.strip(), count, vcpus, memory, mem, price, spots[r[sp_]],
                         region.strip(), zone.strip())
        except ValueError as e:
            problems.append(Problem(n, str(e)))


def collapse_skypilot(rows: Iterator[tuple[int, list[str], SkyValues]], provider: str, meta: dict[str, str],
                      path: str, resolve: Resolve | None, problems: list[Problem],
                      keep: Callable[[list[str]], None] | None = None) -> OfferTable:
    """One offer per (instance type, region): the on-demand price (the highest zone's), the cheapest zone's
    spot price, every zone. With `resolve`, GPU names become the catalog's; a row whose GPU the catalog
    lacks is a Problem (and no part of an offer). `keep` sees the fields of every row used."""
    inc, minimum = CLOUD_BILLING.get(provider, (1, 60))
    names: dict[tuple[str, int | None], str | None] = {}
    grouped: dict[tuple[str, str], list] = {}
    for n, raw, (itype, accel, count, vcpus, memory, mem, price, spot, region, zone) in rows:
        key = (accel, mem)
        name = names.get(key, key)
        if name is key:
            name = names[key] = accel if resolve is None else resolve(accel, mem)
        if name is None:
            problems.append(Problem(n, UNKNOWN_GPU.format(accel)))
            continue
        if keep is not None:
            keep(raw)
        g = grouped.get((itype, region))
        if g is None:
            grouped[(itype, region)] = [name, count, price, spot, [zone], mem, vcpus, memory]
            continue
        if price > g[2]:  # the first of equal prices stays, as max() keeps it
            g[2] = price
        if spot is not None and (g[3] is None or spot < g[3]):
            g[3] = spot
        g[4].append(zone)
    n = len(grouped)
    cols = {"provider": [provider] * n, "instance_type": [k[0] for k in grouped], "region": [k[1] for k in grouped],
            "currency": [CLOUD_CURRENCY] * n, "billing_increment_s": [inc] * n, "billing_minimum_s": [minimum] * n,
            "source": [meta.get("source", path)] * n, "date": [meta.get("date", "")] * n}
    for f, j in (("gpu", 0), ("gpu_count", 1), ("price", 2), ("spot_price", 3), ("zones", 4), ("gpu_memory_mib", 5),
                 ("vcpus", 6), ("memory_gib", 7)):
        cols[f] = [g[j] for g in grouped.values()]
    return OfferTable(cols, [SKY_GIVEN])


# --------------------------------------------------------------------------- our layout


_POSITIVE = "Input should be greater than 0"
_NON_NEGATIVE = "Input should be greater than or equal to 0"


def parse_ours(text: str, path: str, resolve: Resolve | None,
               keep: Callable[[int, list[str], list[str]], None] | None = None
               ) -> tuple[OfferTable, list[Problem], dict[str, str]]:
    """Our layout: one offer per GPU count of a row ("1-2": two), prices per card (`gpu`) or per rig
    (`instance`). With `resolve`, GPU names become the catalog's (unknown ones are Problems, before any
    other field is looked at). A row gives all its offers or none. `keep` sees (line, header, fields) of
    every row used."""
    meta, lines = split_comments(text)
    cols_in = header(lines, OUR_COLUMNS, path)
    width = len(cols_in)
    (prov_, itype_, gpu_, count_, per_, price_, spot_, cur_, region_, inc_, min_, source_,
     date_) = positions(cols_in, OUR_COLUMNS)
    prices, spots = _Decimals("price", False), _Decimals("spot_price", True)
    names: dict[str, str | None] = {}
    problems: list[Problem] = []
    out: dict[str, list] = {f: [] for f in FIELDS}
    for n, r in records(lines[1:]):
        if len(r) != width:
            problems.append(Problem(n, f"{len(r)} fields, expected {len(OUR_COLUMNS)}"))
            continue
        try:
            lo, _, hi = r[count_].strip().partition("-")
            counts = range(int(lo), int(hi or lo) + 1)
            if r[per_] not in ("gpu", "instance"):
                raise ValueError(f"price_per must be 'gpu' or 'instance', got {r[per_]!r}")
            per_gpu = r[per_] == "gpu"
            gpu = r[gpu_].strip()
            if resolve is not None:
                name = names[gpu] if gpu in names else names.setdefault(gpu, resolve(gpu, None))
                if name is None:
                    raise ValueError(UNKNOWN_GPU.format(gpu))
                gpu = name
            price, spot = prices[r[price_]], spots[r[spot_]]
            if not counts:
                raise ValueError(f"gpu_count {r[count_]!r} is an empty range")
            inc, minimum = int(r[inc_]), int(r[min_])
            # what Offer's constraints say, in its field order (gpu_count, billing increment, minimum)
            bad = ("gpu_count", _POSITIVE) if counts[0] <= 0 else ("billing_increment_s", _POSITIVE) if inc <= 0 \
                else ("billing_minimum_s", _NON_NEGATIVE) if minimum < 0 else None
            if bad:
                problems.append(Problem(n, f"{bad[0]}: {bad[1]}"))
                continue
        except ValueError as e:
            problems.append(Problem(n, str(e)))
            continue
        if keep is not None:
            keep(n, cols_in, r)
        itype, many = r[itype_].strip(), len(counts) > 1
        source, date = r[source_] or meta.get("source", path), r[date_] or meta.get("date", "")
        provider, currency, region = r[prov_].strip(), r[cur_].strip().upper(), r[region_].strip()
        for c in counts:
            k = c if per_gpu else 1
            for f, v in (("provider", provider), ("instance_type", itype + (f"x{c}" if many else "")), ("gpu", gpu),
                         ("gpu_count", c), ("price", price * k), ("spot_price", None if spot is None else spot * k),
                         ("currency", currency), ("region", region), ("zones", ()), ("billing_increment_s", inc),
                         ("billing_minimum_s", minimum), ("gpu_memory_mib", None), ("vcpus", None),
                         ("memory_gib", None), ("source", source), ("date", date)):
                out[f].append(v)
    return OfferTable(out, [OURS_GIVEN]), problems, meta
