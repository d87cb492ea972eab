"""Untrusted plans at the controller's boundary: names that would leave their folders and manifests that
would read outside their dataset are refused - one error, one hint, exit 2 - before anything is launched,
billed or written (also on a rented SSH host, where the audit saw a refusal after launch + bootstrap)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.runner.conftest import db

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "plans" / "smoke.yaml"


def _plan(tmp_path: Path, name: str = "smoke", task: str = "captions", manifest: list[dict] | None = None,
          dataset: dict | None = None, **fields) -> Path:
    doc = yaml.safe_load(SMOKE.read_text())
    doc["name"] = name
    doc["tasks"] = [dict(doc["tasks"][0], name=task)]
    doc.update(fields)
    if manifest is not None:
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        (data / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in manifest))
        doc["tasks"][0]["dataset"] = {"kind": "local", "path": "data/m.jsonl"}
    if dataset is not None:
        doc["tasks"][0]["dataset"] = dataset
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


def _one_error(code, err, needle):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and lines[0].startswith("error:") and lines[1].startswith("hint:"), err
    assert needle in lines[0], err


def _nothing_happened(home: Path, outside: Path) -> None:
    if (home / "ledger.db").exists():
        assert db(home).execute("SELECT count(*) FROM runs").fetchone()[0] == 0
        assert db(home).execute("SELECT count(*) FROM instances").fetchone()[0] == 0
    assert not list((home / "runs").glob("*")) if (home / "runs").exists() else True
    assert not (home / "instances").exists() or not list((home / "instances").iterdir())
    assert not list(outside.glob("escaped*"))


def _secret(tmp_path: Path) -> Path:
    from PIL import Image

    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    return secret


CASES = {
    "plan name ../": ({"name": "../../escaped"}, "plan name '../../escaped' is not allowed"),
    "plan name /abs": ({"name": "/tmp/escaped"}, "is not allowed"),
    "task name ../": ({"task": "../../victim"}, "task name '../../victim' is not allowed"),
    "absolute media": ("abs", "relative to the manifest"),
    "media ../": ("up", "relative to the manifest"),
    "symlink out": ("link", "points outside the dataset"),
    "int path": ("int", "expected a path string"),
    # issue 22, finding 10: refused only on the instance, after billing
    "file:// media": ("file:///etc/passwd", "file:///etc/passwd: only http(s) addresses are fetched"),
    "loopback media": ("http://127.0.0.1:8080/x.png", "127.0.0.1 is a private or local address"),
    "localhost media": ("http://localhost/x.png", "localhost is a private or local address"),
    "metadata media": ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a private or local address"),
    "decimal loopback media": ("http://2130706433/x.png", "2130706433 is a private or local address"),
    "a URL in a local manifest": ("https://example.com/x.png", "a local manifest names files beside it"),
    "a 5000-character path": ("a" * 5000, "5000 characters"),
    "a 2 GiB image": ("huge", "huge.png is 2048 MiB: over the 64 MiB cap of an image"),
    "file:// dataset": ({"dataset": {"kind": "url", "url": "file:///etc/passwd"}}, "only http(s) addresses"),
    "ftp:// dataset": ({"dataset": {"kind": "url", "url": "ftp://example.com/m.jsonl"}}, "only http(s) addresses"),
    "gopher:// dataset": ({"dataset": {"kind": "url", "url": "gopher://example.com/m"}}, "only http(s) addresses"),
    "loopback dataset": ({"dataset": {"kind": "url", "url": "http://127.0.0.1:9/m.jsonl"}},
                         "127.0.0.1 is a private or local address"),
    "private mirror": ({"dataset": {"kind": "builtin", "name": "coco-val2017-captions", "url": "http://10.1.2.3/"}},
                       "10.1.2.3 is a private or local address"),
}


def _case(tmp_path: Path, case: str) -> tuple[Path, str]:
    change, needle = CASES[case]
    if isinstance(change, dict):
        return _plan(tmp_path, **change), needle
    secret = _secret(tmp_path)
    if change == "huge":  # a sparse file: 2 GiB that take no disk
        (tmp_path / "data").mkdir(exist_ok=True)
        with open(tmp_path / "data" / "huge.png", "wb") as f:
            f.truncate(2 * 2**30)
    image = {"abs": str(secret), "up": "../secret.png", "link": "link.png", "int": 7, "huge": "huge.png"}.get(change, change)
    plan = _plan(tmp_path, manifest=[{"id": "a", "image": image, "references": ["x"]}])
    (tmp_path / "data" / "link.png").symlink_to(secret)
    return plan, needle


@pytest.mark.parametrize("case", list(CASES))
def test_untrusted_plans_are_refused_before_launch(cli, budget_home, tmp_path, case):
    plan, needle = _case(tmp_path, case)
    code, _, err = cli("run", plan, "--provider", "local", "--yuan", "5", "--yes")
    _one_error(code, err, needle)
    _nothing_happened(budget_home, tmp_path)
    code, _, err = cli("eval", plan, "--out", tmp_path / "out")  # the same boundary for `budget eval`
    _one_error(code, err, needle)


def test_a_rented_host_is_not_touched_for_a_bad_manifest(cli, ssh_host, budget_home, tmp_path):
    plan, needle = _case(tmp_path, "symlink out")
    code, _, err = cli("run", plan, "--provider", "ssh", "--yuan", "5", "--yes")
    _one_error(code, err, needle)
    _nothing_happened(budget_home, tmp_path)
    assert not list(ssh_host.remote_dir.iterdir())  # nothing pushed, nothing started, nothing billed


def test_run_ids_from_the_command_line_cannot_leave_runs(cli, budget_home, tmp_path):
    for args in (["drive", "../../escaped"], ["stop", "../x"], ["status", "../x"]):
        code, _, err = cli(*args)
        assert code == 2 and "Traceback" not in err, (args, err)
    assert not list(tmp_path.glob("escaped*")) and not os.path.exists(budget_home.parent / "escaped")


def test_a_home_that_cannot_be_written_is_refused_before_launch(tmp_path, monkeypatch):
    """Disk full / read-only home: the controller must not start an instance it could not account for."""
    import subprocess
    import sys

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    env = dict(os.environ, BUDGET_HOME=str(blocker / "home"))  # a path no one can create: ENOTDIR
    p = subprocess.run([sys.executable, "-m", "runner.cli", "run", str(SMOKE), "--provider", "local", "--yuan", "5",
                        "--yes"], check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    _one_error(p.returncode, p.stderr, "cannot be written")
