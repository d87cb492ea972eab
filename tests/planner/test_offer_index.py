"""A user offer file's index: what `budget prices import` stores loads back as exactly the offers reading the
file gives (without reading it); a stale, damaged or doctored index, or a GPU the catalog no longer has, and
the file is read again - with the same error lines reading it gives."""

import os
import zlib
from pathlib import Path

import pytest

from planner import catalog as catalog_mod
from planner import offerindex
from planner.catalog import OUR_COLUMNS, SKYPILOT_COLUMNS, load_catalog, prepare_import, save_index
from planner.errors import CatalogError

INFO = "\"{'Gpus': [{'Name': '%s', 'Count': %d, 'MemoryInfo': {'SizeInMiB': %d}}]}\""


def vms(rows: int = 60) -> str:
    lines = [",".join(SKYPILOT_COLUMNS)]
    kinds = [("g5", "A10G", 1, 22888), ("p4d", "A100", 8, 40960), ("p4de", "A100", 8, 81920), ("g6", "L4", 1, 22888),
             ("p5e", "H200", 8, 143771)]
    for i in range(rows):
        fam, acc, n, mib = kinds[i % 5]
        spot = "" if i % 5 == 0 else f"0.{300 + i}"
        lines.append(f"{fam}.{i // 8}xlarge,{acc},{n}.0,4.0,16.0,{INFO % (acc, n, mib)},{1 + i % 7}.25,{spot},"
                     f"us-east-{1 + i % 2},us-east-{1 + i % 2}{'abc'[i % 3]}")
    lines.append("m5.large,,,2.0,8.0,,0.096,,us-east-1,us-east-1a")  # skipped: a CPU instance
    return "\n".join(lines) + "\n"


def imported(home: Path, text: str, fmt: str = "skypilot", provider=None, path="/somewhere/vms.csv") -> Path:
    r = prepare_import(text, path, fmt, provider, load_catalog(), "2026-02-02")
    dest = home / "catalog" / "offers" / r.file_name
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(r.content, encoding="utf-8")
    save_index(dest, r)
    return dest


def reading_the_file(monkeypatch, read: bool):
    """Count the files parsed (not loaded from an index)."""
    seen = []
    real = catalog_mod._parse_offer_file

    def parse(text, p, resolve):
        seen.append(p.name)
        return real(text, p, resolve)
    monkeypatch.setattr(catalog_mod, "_parse_offer_file", parse)
    return seen


def as_rows(cat):
    return [(repr(o.model_dump()), sorted(o.model_fields_set)) for o in cat.offers]


def from_the_file(home: Path, monkeypatch) -> list:
    """The catalog as reading every file gives it (no index)."""
    with monkeypatch.context() as m:
        m.setattr(offerindex, "load", lambda p, own: None)
        m.setattr(offerindex, "save", lambda p, t, own: None)
        return as_rows(load_catalog(home / "catalog"))


def test_an_imported_catalog_loads_from_its_index(tmp_path, monkeypatch):
    dest = imported(tmp_path, vms())
    assert offerindex.index_path(dest).is_file()
    seen = reading_the_file(monkeypatch, False)
    cat = load_catalog(tmp_path / "catalog")
    user = [p for p in seen if not p.startswith(("csdn", "autodl"))]
    assert seen and "aws.vms.csv" in seen  # the bundled aws.vms.csv is read (bundled files have no index)
    assert user.count("aws.vms.csv") == 1  # ... and the user's is not: one read only
    assert as_rows(cat) == from_the_file(tmp_path, monkeypatch)
    aws = [o for o in cat.offers if o.provider == "aws"]
    assert len(aws) == len({(o.instance_type, o.region) for o in aws}) and {o.gpu for o in aws} == {
        "A10G", "A100-40GB", "A100-80GB", "L4", "H200"}
    assert all(o.source == "imported from vms.csv" and o.date == "2026-02-02" for o in aws)


def test_our_layout_with_a_provider_loads_from_its_index(tmp_path, monkeypatch):
    head = ",".join(OUR_COLUMNS)
    text = f"{head}\nx,box,RTX 4090,1-3,gpu,2.0,,cny,cn,60,60,,\nx,big,H100,8,instance,80,30,CNY,cn,3600,3600,s,d\n"
    dest = imported(tmp_path, text, "csv", provider="mine")
    assert dest.name == "mine.csv" and offerindex.index_path(dest).is_file()
    seen = reading_the_file(monkeypatch, False)
    cat = load_catalog(tmp_path / "catalog")
    assert "mine.csv" not in seen
    assert as_rows(cat) == from_the_file(tmp_path, monkeypatch)
    assert [(o.provider, o.instance_type, o.gpu, o.price) for o in cat.offers if o.provider == "mine"][:2] == [
        ("mine", "boxx1", "RTX4090", 2), ("mine", "boxx2", "RTX4090", 4)]


@pytest.mark.parametrize("change", ["touched", "edited", "damaged", "doctored", "removed"])
def test_a_stale_or_damaged_index_means_reading_the_file(tmp_path, monkeypatch, change):
    dest = imported(tmp_path, vms())
    index = offerindex.index_path(dest)
    if change == "touched":
        os.utime(dest, ns=(dest.stat().st_atime_ns, dest.stat().st_mtime_ns + 10**9))
    elif change == "edited":  # a zone renamed by hand, same size
        dest.write_text(dest.read_text().replace("us-east-1a\n", "us-east-1x\n", 1))
    elif change == "damaged":
        raw = bytearray(index.read_bytes())
        raw[len(raw) // 2] ^= 0x20
        index.write_bytes(bytes(raw))
    elif change == "doctored":  # a negative price, the CRC made to fit: the values are checked
        crc, _, body = index.read_bytes().partition(b"\n")
        body = body.replace(b'"1.25"', b'"-1.25"')
        index.write_bytes(b"%d\n" % zlib.crc32(body) + body)
    else:
        index.unlink()
    seen = reading_the_file(monkeypatch, True)
    cat = load_catalog(tmp_path / "catalog")
    assert seen.count("aws.vms.csv") == 2  # the bundled file and the user's
    assert as_rows(cat) == from_the_file(tmp_path, monkeypatch)
    assert offerindex.load(dest, str(dest)) is not None  # written again: the next plan loads it
    if change == "edited":
        assert any("us-east-1x" in o.zones for o in cat.offers)


def test_a_gpu_the_catalog_lost_is_the_error_reading_the_file_gives(tmp_path, monkeypatch):
    dest = imported(tmp_path, vms())
    user = tmp_path / "catalog"
    real = catalog_mod.read_gpus  # a catalog without H200 (a later version, say): the index cannot be resolved
    monkeypatch.setattr(catalog_mod, "read_gpus", lambda text, path: [g for g in real(text, path) if g.name != "H200"])
    with pytest.raises(CatalogError) as via_index:
        load_catalog(user)
    offerindex.index_path(dest).unlink()
    with pytest.raises(CatalogError) as via_file:
        load_catalog(user)
    assert via_index.value.message == via_file.value.message
    assert "unknown GPU 'H200'" in via_index.value.message and "(and 11 more)" in via_index.value.message


def test_a_moved_home_keeps_the_sources(tmp_path, monkeypatch):
    """A row without a source names its file: the index keeps that as 'the file', not a path."""
    head = ",".join(OUR_COLUMNS)
    dest = imported(tmp_path / "a", f"{head}\nx,box,T4,1,gpu,2.0,,CNY,cn,60,60,,\n", "csv")
    text = dest.read_text().replace("# source: imported from vms.csv\n", "")
    dest.write_text(text)  # no stamp: rows without a source name the file
    load_catalog(tmp_path / "a" / "catalog")  # reads it, writes the index
    (tmp_path / "a").rename(tmp_path / "b")
    cat = load_catalog(tmp_path / "b" / "catalog")
    (box,) = [o for o in cat.offers if o.provider == "x"]
    assert box.source == str(tmp_path / "b" / "catalog" / "offers" / "x.csv")
    assert as_rows(cat) == from_the_file(tmp_path / "b", monkeypatch)


def test_a_stamp_with_a_line_break_is_not_indexed_from_memory(tmp_path):
    """A file name with a vertical tab: its `# source: imported from NAME` stamp breaks where
    str.splitlines() breaks, so the stored file does not read back as the rows imported. No index is written
    from memory; reading the file says what is wrong with it, as it did."""
    dest = imported(tmp_path, vms(8), path="/somewhere/v\x0bms.csv")
    assert not offerindex.index_path(dest).exists()
    with pytest.raises(CatalogError, match="header lacks"):
        load_catalog(tmp_path / "catalog")


def test_a_skypilot_import_refuses_a_provider_its_file_name_cannot_carry(tmp_path):
    """A SkyPilot file's provider is its file name up to the first '.' (aws.vms.csv): `--provider my.cloud`
    was stored as my.cloud.vms.csv and came back as provider 'my' - `budget plan --provider my.cloud` then found
    nothing. Refused at import, with the reason."""
    with pytest.raises(CatalogError, match="provider name 'my.cloud'") as e:
        prepare_import(vms(4), "vms.csv", "skypilot", "my.cloud", load_catalog(), "2026-02-02")
    assert "'.'" in e.value.message + e.value.hint
    dest = imported(tmp_path, vms(4), provider="my-cloud")
    assert dest.name == "my-cloud.vms.csv"
    assert "my-cloud" in {o.provider for o in load_catalog(tmp_path / "catalog").offers}
