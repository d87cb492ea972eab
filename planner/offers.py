"""Offers held as columns: one list per field of `Offer`, so that a catalog of a million SkyPilot rows is a
few dozen lists rather than hundreds of thousands of pydantic objects. It is a `Sequence[Offer]`: indexing
or iterating builds the `Offer` objects on demand (without validation: every value was validated where the
row was read, planner/offerfiles.py), while the optimizer and the catalog read the columns directly.

The optimizer sees a table by its shapes: offers alike in all it plans by (GPU as named, count, card
memory, provider, billing rule, currency), with their rows in catalog order and ordered by price and by spot
price. A table computes them once when asked; a table loaded from an index (planner/offerindex.py) has them
already, and a table made of others merges theirs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from .models import Offer

FIELDS = tuple(Offer.model_fields)
SHAPE = ("gpu", "gpu_count", "gpu_memory_mib", "provider", "billing_increment_s", "billing_minimum_s", "currency")
_new, _set = object.__new__, object.__setattr__


def make_offer(values: dict, given: frozenset[str]) -> Offer:
    """`Offer.model_construct(**values)` for values already checked, at a seventh of its cost (what
    model_construct does for a model without extras, private attributes or post-init hooks;
    tests/planner/test_offer_table.py holds it equal to model_construct and to a validated Offer).
    `given`: the fields the row set (the others hold Offer's defaults)."""
    o = _new(Offer)
    _set(o, "__dict__", values)
    _set(o, "__pydantic_fields_set__", set(given))
    _set(o, "__pydantic_extra__", None)
    _set(o, "__pydantic_private__", None)
    return o


@dataclass(slots=True)
class Shape:
    """Rows of offers alike in all the optimizer plans by (the fields of SHAPE): in catalog order, ordered by
    price, those with a spot price in catalog order and ordered by it (equal prices in catalog order). Each
    list holds row numbers less `base` (a table placed after others shifts its shapes without copying them)."""

    rows: list[int]
    by_price: list[int]
    with_spot: list[int]
    by_spot: list[int]
    base: int = 0

    def shifted(self, by: int) -> Shape:
        return Shape(self.rows, self.by_price, self.with_spot, self.by_spot, self.base + by)

    def actual(self) -> Shape:
        """The same rows with `base` added in (lists of table rows)."""
        if not self.base:
            return self
        return Shape(*(list(map(self.base.__add__, x)) for x in (self.rows, self.by_price, self.with_spot,
                                                                  self.by_spot)))

    def joined(self, other: Shape, price: list, spot: list) -> Shape:
        """Both shapes' rows as one (`price`, `spot`: the table's columns)."""
        a, b = self.actual(), other.actual()
        return Shape(sorted(a.rows + b.rows), sorted(a.by_price + b.by_price, key=price.__getitem__),
                     sorted(a.with_spot + b.with_spot), sorted(a.by_spot + b.by_spot, key=spot.__getitem__))


class OfferTable(Sequence[Offer]):
    """Offers as columns. `cols` maps every Offer field to a list of one value per offer (the default where
    a row did not set the field); `kinds[i]` indexes `givens`, the set of fields row i set."""

    __slots__ = ("cols", "givens", "kinds", "_shapes", "_parts")

    def __init__(self, cols: dict[str, list], givens: list[frozenset[str]], kinds: list[int] | None = None,
                 shapes: dict[tuple, Shape] | None = None) -> None:
        n = len(cols["provider"])
        if set(cols) != set(FIELDS) or any(len(c) != n for c in cols.values()):
            raise ValueError("an offer table needs one column of equal length per Offer field")
        self.cols, self.givens = {f: cols[f] for f in FIELDS}, givens  # Offer's field order: its dumps keep it
        self.kinds = kinds if kinds is not None else [0] * n
        self._shapes = shapes
        self._parts: list[OfferTable] = []

    @classmethod
    def of(cls, offers: Iterable[Offer]) -> OfferTable:
        """The table of Offer objects (a list a caller built, a plan's few offers)."""
        if isinstance(offers, OfferTable):
            return offers
        offers = list(offers)
        givens: dict[frozenset[str], int] = {}
        kinds = [givens.setdefault(frozenset(o.model_fields_set), len(givens)) for o in offers]
        cols = {f: [getattr(o, f) for o in offers] for f in FIELDS}
        return cls(cols, list(givens) or [frozenset(FIELDS)], kinds)

    @classmethod
    def concat(cls, tables: Sequence[OfferTable]) -> OfferTable:
        """One table of `tables` in order (its shapes: theirs, merged when asked)."""
        tables = [t for t in tables if len(t)] or list(tables[:1])
        if len(tables) == 1:
            return tables[0]
        if not tables:
            return cls({f: [] for f in FIELDS}, [frozenset(FIELDS)])
        givens: list[frozenset[str]] = []
        kinds: list[int] = []
        for t in tables:
            remap = []
            for g in t.givens:
                if g not in givens:
                    givens.append(g)
                remap.append(givens.index(g))
            kinds += t.kinds if remap == list(range(len(remap))) else [remap[k] for k in t.kinds]
        cols: dict[str, list] = {f: [] for f in FIELDS}
        for t in tables:
            for f, col in cols.items():
                col += t.cols[f]
        table = cls(cols, givens, kinds)
        table._parts = list(tables)
        return table

    def take(self, rows: Iterable[int]) -> OfferTable:
        """The offers at `rows`, in that order."""
        rows = list(rows)
        return OfferTable({f: [c[i] for i in rows] for f, c in self.cols.items()}, self.givens,
                          [self.kinds[i] for i in rows])

    def with_column(self, name: str, values: list, shapes: dict[tuple, Shape] | None = None) -> OfferTable:
        """The same offers with column `name` replaced (`shapes`: the shapes then, when the caller knows them)."""
        return OfferTable({**self.cols, name: values}, self.givens, self.kinds,
                          shapes if shapes is not None or name not in SHAPE else None)

    def with_gpus(self, names: dict[tuple[str, int | None], str]) -> OfferTable:
        """The same offers with GPU names replaced: `names[(gpu, gpu_memory_mib)]` (the catalog's name for a GPU
        as a file writes it); shapes that become one are merged."""
        by_name = {}
        for (name, _), new in names.items():
            by_name[name] = new if by_name.get(name, new) == new else None
        if None in by_name.values():  # one name, several cards (A100 of 40 or 80 GB): by name and memory
            gpu = [names[k] for k in zip(self.cols["gpu"], self.cols["gpu_memory_mib"])]
        else:
            gpu = list(map(by_name.__getitem__, self.cols["gpu"]))
        shapes = None
        if self._shapes is not None:
            price, spot = self.cols["price"], self.cols["spot_price"]
            shapes = {}
            for k, s in self._shapes.items():
                key = (names[(k[0], k[2])], *k[1:])
                got = shapes.get(key)
                shapes[key] = s if got is None else got.joined(s, price, spot)
        return OfferTable({**self.cols, "gpu": gpu}, self.givens, self.kinds, shapes)

    def gpu_keys(self) -> list[tuple[str, int | None]]:
        """The distinct (GPU name, card MiB) of the offers."""
        if self._shapes is not None:
            return list(dict.fromkeys((k[0], k[2]) for k in self._shapes))
        return list(dict.fromkeys(zip(self.cols["gpu"], self.cols["gpu_memory_mib"])))

    def shapes(self) -> dict[tuple, Shape]:
        """The offers by shape (SHAPE's fields, in the order shapes first appear)."""
        if self._shapes is None:
            self._shapes = self._merged() if self._parts else self._computed()
        return self._shapes

    def _computed(self) -> dict[tuple, Shape]:
        found: dict[tuple, list[int]] = {}
        for i, k in enumerate(zip(*(self.cols[f] for f in SHAPE))):
            got = found.get(k)
            if got is None:
                found[k] = [i]
            else:
                got.append(i)
        price, spot = self.cols["price"], self.cols["spot_price"]
        out = {}
        for k, rows in found.items():
            with_spot = [i for i in rows if spot[i] is not None]
            out[k] = Shape(rows, sorted(rows, key=price.__getitem__), with_spot,
                           sorted(with_spot, key=spot.__getitem__))
        return out

    def _merged(self) -> dict[tuple, Shape]:
        out: dict[tuple, Shape] = {}
        price, spot = self.cols["price"], self.cols["spot_price"]
        offset = 0
        for part in self._parts:
            for k, s in part.shapes().items():
                s = s.shifted(offset)
                got = out.get(k)
                out[k] = s if got is None else got.joined(s, price, spot)
            offset += len(part)
        return out

    def __len__(self) -> int:
        return len(self.kinds)

    @overload
    def __getitem__(self, i: int) -> Offer: ...

    @overload
    def __getitem__(self, i: slice) -> OfferTable: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.take(range(len(self))[i])
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("offer index out of range")
        return self.offer(i)

    def offer(self, i: int) -> Offer:
        given = self.givens[self.kinds[i]]
        values = {f: c[i] for f, c in self.cols.items()}
        values["zones"] = list(values["zones"])  # each Offer its own list, as a validated one has
        return make_offer(values, given)

    def __iter__(self) -> Iterator[Offer]:
        return (self.offer(i) for i in range(len(self)))

    def __repr__(self) -> str:
        return f"OfferTable({len(self)} offers)"

    def offer_id(self, i: int) -> str:
        """`Offer.id` of row i, without building the Offer."""
        c = self.cols
        return f"{c['provider'][i]}:{c['instance_type'][i]}" + (f"@{c['region'][i]}" if c["region"][i] else "")
