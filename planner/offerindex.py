"""What a user offer file parsed to, kept beside it: `$BUDGET_HOME/catalog/offers/.index/<file>.json`.

A SkyPilot catalog of a million zone rows takes seconds to read and check; its offers (one per instance
type and region, GPU names as the file writes them) load from here in a fraction of that, with the shapes the
optimizer plans by (planner/offers.py) already found and ordered by price. `budget prices import` writes the
index with the file; a plan writes it for a file that has none (or a stale one), after reading the file.

The index names the file's size and modification time and carries a CRC of its own body: another file, a
damaged index, or a value the parsers would not have let through, and the file is read again. Columns are
dictionary-encoded (the distinct values once, then one code per offer), so checking the values costs one pass
over the distinct ones; codes and row lists are packed arrays (base64), which load at memory speed.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import zlib
from array import array
from decimal import Decimal, InvalidOperation
from pathlib import Path

from .offers import FIELDS, SHAPE, OfferTable, Shape

SCHEMA = "gpubudget.offer-index/3"
FOLDER = ".index"
ARRAY = {"typecode": "I", "itemsize": array("I").itemsize, "byteorder": sys.byteorder}
DECIMALS = ("price", "spot_price")


def index_path(p: Path) -> Path:
    return p.parent / FOLDER / f"{p.name}.json"


def _stamp(p: Path) -> dict:
    st = p.stat()
    return {"name": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _pack(ints: list[int]) -> str:
    return base64.b64encode(array("I", ints).tobytes()).decode("ascii")


def _unpack(text: str, n: int | None = None) -> list[int]:
    a = array("I")
    a.frombytes(base64.b64decode(text, validate=True))
    if n is not None and len(a) != n:
        raise ValueError("offer index: a list of the wrong length")
    return a.tolist()


def encode(table: OfferTable, own_path: str) -> dict:
    """The index document of `table` (GPU names as written); `own_path`: the file's path as a row without a
    source names it (kept as null: the index stays right where the catalog moves)."""
    columns: dict[str, dict] = {"instance_type": {"list": table.cols["instance_type"]}}
    for f in FIELDS:
        if f == "instance_type":
            continue
        col = table.cols[f]
        # what tells values apart: Decimals by their text ('1.0' and '1.00' print apart), floats by theirs (nan
        # is one value); a key is also what the index keeps, but for a float, and the file's own path
        if f in DECIMALS:
            keys = [None if v is None else str(v) for v in col]
        elif f == "zones":
            keys = list(map(tuple, col))
        elif f in ("vcpus", "memory_gib"):
            keys = list(map(repr, col))
        else:
            keys = col
        codes = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        if f in ("vcpus", "memory_gib"):
            values = list(dict(zip(keys, col)).values())  # in the order of first appearance, as `codes`
        elif f == "source":
            values = [None if k == own_path else k for k in codes]
        else:
            values = [list(k) if f == "zones" else k for k in codes]
        columns[f] = {"values": values, "codes": _pack(list(map(codes.__getitem__, keys))) if len(codes) > 1 else None}
    shapes = [[list(k), *map(_pack, (s.rows, s.by_price, s.with_spot, s.by_spot))]
              for k, s in ((k, s.actual()) for k, s in table.shapes().items())]
    return {"schema": SCHEMA, "array": ARRAY, "offers": len(table), "givens": [sorted(g) for g in table.givens],
            "kinds": _pack(table.kinds), "columns": columns, "shapes": shapes}


def save(p: Path, table: OfferTable, own_path: str) -> None:
    """Write the index of offer file `p` (atomically; indexes of files no longer there are removed)."""
    body = json.dumps({**encode(table, own_path), "file": _stamp(p)}, separators=(",", ":")).encode()
    dest = index_path(p)
    dest.parent.mkdir(exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(b"%d\n" % zlib.crc32(body) + body)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    for old in dest.parent.glob("*.json"):
        if not (p.parent / old.name.removesuffix(".json")).exists():
            old.unlink(missing_ok=True)


def load(p: Path, own_path: str) -> OfferTable | None:
    """The offers of file `p` from its index (GPU names as written, shapes found), or None: no index, a stale
    or damaged one."""
    try:
        raw = index_path(p).read_bytes()
        at = raw.find(b"\n")
        crc, body = raw[:at], memoryview(raw)[at + 1:]
        if at < 1 or not crc.isdigit() or int(crc) != zlib.crc32(body):
            return None
        doc = json.loads(raw[at + 1:])
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or doc.get("array") != ARRAY or \
                doc.get("file") != _stamp(p):
            return None
        return _decode(doc, own_path)
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, InvalidOperation):
        return None


def _decode(doc: dict, own_path: str) -> OfferTable | None:
    n = doc["offers"]
    cols: dict[str, list] = {}
    for f in FIELDS:
        spec = doc["columns"][f]
        if f == "instance_type":
            col = spec["list"]
            if len(col) != n or not set(map(type, col)) <= {str}:
                return None
            cols[f] = col
            continue
        values = _values(f, spec["values"], own_path)
        if spec["codes"] is None:  # one value for every offer
            if len(values) != 1:
                return None
            cols[f] = values * n
        else:  # a code past the values is an IndexError: no index
            cols[f] = list(map(values.__getitem__, _unpack(spec["codes"], n)))
    givens = [frozenset(g) for g in doc["givens"]]
    kinds = _unpack(doc["kinds"], n)
    if not givens or any(not g <= set(FIELDS) for g in givens) or (n and max(kinds) >= len(givens)):
        return None
    shapes: dict[tuple, Shape] = {}
    counted = 0
    for key, *lists in doc["shapes"]:
        s = Shape(*map(_unpack, lists))
        if not s.rows or len(s.by_price) != len(s.rows) or len(s.by_spot) != len(s.with_spot) or \
                len(s.with_spot) > len(s.rows) or s.rows[-1] >= n or \
                tuple(key) != tuple(cols[f][s.rows[0]] for f in SHAPE):
            return None
        shapes[tuple(key)] = s
        counted += len(s.rows)
    if counted != n:
        return None
    return OfferTable(cols, givens, kinds, shapes)


def _values(f: str, values: list, own_path: str) -> list:
    """The distinct values of field `f`, checked as the parsers check them (ValueError when one is not)."""
    kinds = set(map(type, values))
    if f in DECIMALS:
        if not kinds <= ({str, type(None)} if f == "spot_price" else {str}):
            raise ValueError(f"offer index: bad {f}")
        ds = [None if v is None else Decimal(v) for v in values]
        real = [d for d in ds if d is not None]
        if not all(map(Decimal.is_finite, real)) or (real and min(real) < 0):
            raise ValueError(f"offer index: bad {f}")
        return ds
    if f == "zones":
        if not kinds <= {list} or not all(set(map(type, z)) <= {str} for z in values):
            raise ValueError("offer index: bad zones")
        return [tuple(z) for z in values]
    if f == "source":
        if not kinds <= {str, type(None)}:
            raise ValueError("offer index: bad source")
        return [own_path if v is None else v for v in values]
    ok = {"gpu_count": ({int}, 1), "billing_increment_s": ({int}, 1), "billing_minimum_s": ({int}, 0),
          "gpu_memory_mib": ({int, type(None)}, None), "vcpus": ({float, type(None)}, None),
          "memory_gib": ({float, type(None)}, None)}
    allowed, least = ok.get(f, ({str}, None))
    if not kinds <= allowed or (least is not None and values and min(values) < least):
        raise ValueError(f"offer index: bad {f}")
    return values
