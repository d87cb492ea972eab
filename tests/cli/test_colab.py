"""The free Colab path: `budget colab PLAN` writes a self-contained notebook that runs the plan's job (the one
`budget run` would build) and zips its results; `budget import RESULTS.zip` records them as a 0 CNY run that
`budget report` counts - through one boundary for the zip (runner/imported.py), tested here with real hostile
archives. The end-to-end test executes the notebook on a plain CPU kernel (nbclient), worker from this
repository (`--worker-from`: on the worker's PYTHONPATH, no install; on Colab the notebook pip-installs it)."""

from __future__ import annotations

import ast
import base64
import json
import re
import stat
import struct
import time
import zipfile
from pathlib import Path

import nbformat
import pytest

from planner.catalog import load_catalog
from planner.errors import InputError
from planner.plans import load_plan
from runner import colab, imported, jobs
from runner.colab import FOLDER

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "plans" / "smoke.yaml"
RUN_ID = "smoke-20261207-101500-ab12"
LINE = {"id": "syn-0", "task": "captions", "kind": "caption", "status": "ok", "prediction": "a red circle",
        "references": ["a red circle"], "latency_s": 0.1, "batch_size": 1, "decode_tokens": 4, "prefill_tokens": 8,
        "visual_tokens": 4, "ttft_s": 0.01}


def the_job(home: Path, **kw) -> dict:
    return jobs.build(load_plan(SMOKE), SMOKE, load_catalog(), home, quantization="fp16", limit=1, run_id=RUN_ID, **kw)


def results_zip(path: Path, home: Path, members: dict | None = None, job: dict | None = None) -> Path:
    """A zip as the notebook's last cell writes it (job, status, summary, one result line), `members` added."""
    job = job or the_job(home)
    docs = {"job.json": json.dumps(job).encode(),
            "status.json": json.dumps({"run_id": RUN_ID, "tasks": {}}).encode(),
            "summary.json": json.dumps({"run_id": RUN_ID, "complete": False, "elapsed_s": 42.0}).encode(),
            "results/captions.jsonl": (json.dumps(LINE) + "\n").encode(), "worker.log": b"started\n"}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in {**docs, **(members or {})}.items():
            if isinstance(data, zipfile.ZipInfo):
                z.writestr(data, data.comment or b"")
            elif data is not None:
                z.writestr(name, data)
    return path


def nothing_written(home: Path) -> bool:
    runs = home / "runs"
    return not (runs.is_dir() and any(runs.iterdir())) and not (home / "ledger.db").exists()


# ------------------------------------------------------------------------------------------- the notebook


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_on_cpu_and_its_zip_is_a_free_run_in_the_report(tmp_path, budget_home, cli):
    import nbclient
    import yaml

    doc = yaml.safe_load(SMOKE.read_text())  # the smoke plan's captions and digits: one model load, seconds
    doc["tasks"] = [t for t in doc["tasks"] if t["name"] in ("captions", "digits")]
    plan = tmp_path / "smoke.yaml"
    plan.write_text(yaml.safe_dump(doc))
    code, out, err = cli("colab", plan, "-o", tmp_path / "smoke.ipynb", "--worker-from", REPO, "--limit", "1")
    assert code == 0, err
    nb = nbformat.read(tmp_path / "smoke.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and "session length: at most 12 h" in nb.cells[0].source
    started = time.monotonic()
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    print(f"notebook executed in {time.monotonic() - started:.1f} s")
    said = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "done" in said and "not on Colab: the zip is at" in said
    (results,) = (tmp_path / FOLDER).glob("*-results.zip")
    with zipfile.ZipFile(results) as z:
        assert {"job.json", "status.json", "summary.json", "worker.log", "results/captions.jsonl"} <= set(z.namelist())
    code, out, err = cli("import", results, "--plan", plan)
    assert code == 0, err
    assert "provider colab, 0.00 CNY; done, 2/2 samples" in out
    code, out, err = cli("report", "--plan", "smoke")
    assert code == 0, err
    assert f"runs: {results.name.removesuffix('-results.zip')} (fp16, 0.00 CNY)" in out
    assert re.search(r"captions +fp16 +CIDEr-D", out) and re.search(r"digits +fp16 +exact match", out), out
    code, out, _ = cli("report", "--format", "json")
    (charge,) = json.loads(out)["charges"]
    assert (charge["provider"], charge["amount_cny"], charge["status"]) == ("colab", "0.00", "terminated")


def test_the_notebook_carries_the_job_budget_run_would_build(tmp_path, budget_home, cli):
    code, _, err = cli("colab", SMOKE, "-o", tmp_path / "n.ipynb", "--limit", "1", "--drive", "evals/smoke")
    assert code == 0, err
    nb = json.loads((tmp_path / "n.ipynb").read_text())
    assert (nb["nbformat"], nb["metadata"]["accelerator"]) == (4, "GPU")
    code_cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    setup, install, job_cell, run_cell, zip_cell = code_cells
    assert "ROOT = os.path.abspath('gpubudget-colab')" in setup
    assert 'pip(WHAT)' in install and "'gpubudget[worker]==" in install  # the package index by default
    (lines,) = [n.value.args[0] for n in ast.parse(job_cell).body  # JOB_JSON = "\n".join([...])
                if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "JOB_JSON"]
    job = json.loads("\n".join(ast.literal_eval(lines)))
    mine = the_job(budget_home, engine=None)
    assert imported._core(job) == imported._core(dict(mine, run_id=job["run_id"]))
    assert job["model"]["source"] == "models/tiny-random-qwen3-vl" and job["cache_dir"] == "cache"
    assert "runner.worker" in run_cell and "DRIVE = 'evals/smoke'" in zip_cell
    code, _, err = cli("colab", SMOKE, "--drive", "../up")
    assert code == 2 and "error: --drive folder part '..'" in err and "hint: " in err


def test_a_wheel_travels_in_the_notebook_and_installs_without_the_index(tmp_path, budget_home, cli):
    wheel = tmp_path / "gpubudget-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK a wheel's bytes")
    code, _, err = cli("colab", SMOKE, "-o", tmp_path / "n.ipynb", "--worker-from", wheel)
    assert code == 0, err
    nb = nbformat.read(tmp_path / "n.ipynb", as_version=4)
    nbformat.validate(nb)
    install = nb.cells[2].source
    assert f"WHEEL = {base64.b64encode(wheel.read_bytes()).decode()!r}" in install
    assert "MODE, WHAT = 'wheel', 'gpubudget-0.1.0-py3-none-any.whl'" in install and '"--no-deps"' in install
    code, _, err = cli("colab", SMOKE, "-o", tmp_path / "n2.ipynb", "--worker-from", tmp_path)
    assert code == 2 and "neither a wheel (.whl) nor a source tree" in err


def test_the_plans_own_data_travels_in_the_notebook_up_to_a_cap(tmp_path, budget_home, cli, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"\x89PNG fake")
    (data / "m.jsonl").write_text(json.dumps({"id": "a", "image": "a.png", "references": ["x"]}) + "\n")
    plan = tmp_path / "mine.yaml"
    plan.write_text("name: mine\nmodel: tiny-random-qwen3-vl\nquantizations: [fp16]\ntasks:\n"
                    "  - {name: caps, kind: caption, samples: 1, image_size: [64, 64],"
                    " dataset: {kind: local, path: data/m.jsonl}}\n")
    code, _, err = cli("colab", plan, "-o", tmp_path / "n.ipynb")
    assert code == 0, err
    job_cell = "".join(json.loads((tmp_path / "n.ipynb").read_text())["cells"][3]["source"])
    files = json.loads(job_cell.split("DATA = ")[1].split("  # the plan's own files")[0])
    assert {k: base64.b64decode(v) for k, v in files.items()} == {
        "data/caps/m.jsonl": (data / "m.jsonl").read_bytes(), "data/caps/a.png": b"\x89PNG fake"}
    monkeypatch.setattr("runner.colab.EMBED_CAP", 20)
    code, _, err = cli("colab", plan, "-o", tmp_path / "n2.ipynb")
    assert code == 2 and "a notebook is not a way to carry gigabytes" in err and "hint:" in err
    assert not (tmp_path / "n2.ipynb").exists()


def test_budget_run_on_colab_is_refused_with_the_way_to_use_it(budget_home, cli):
    code, _, err = cli("run", SMOKE, "--provider", "colab", "--yes")
    assert code == 2
    assert "error: --provider colab is a notebook a person runs" in err and "budget colab PLAN -o plan.ipynb" in err
    assert not (budget_home / "runs").exists()


# ------------------------------------------------------------------------------------------- the import


def test_import_is_idempotent_and_a_newer_zip_of_the_run_replaces_its_results(tmp_path, budget_home, cli):
    z = results_zip(tmp_path / "r.zip", budget_home)
    code, out, err = cli("import", z, "--plan", SMOKE)
    assert code == 0, err
    assert "recorded run" in out
    code, out, _ = cli("import", z)  # without --plan: the plan's name from the run id
    assert code == 0 and "already imported" in out
    more = {"results/documents.jsonl": (json.dumps(dict(LINE, task="documents", kind="document")) + "\n").encode()}
    code, out, err = cli("import", results_zip(tmp_path / "r2.zip", budget_home, more), "--plan", SMOKE)
    assert code == 0 and "replaced the results of run" in out, err
    from runner import home as homes
    from runner.money import results

    led = homes.ledger(budget_home)
    try:
        (run,) = led.runs()
        (inst,) = led.instances(RUN_ID)
        assert (run["provider"], run["pool"], run["plan"], run["state"]) == ("colab", "colab", "smoke", "stopped")
        assert (run["samples_done"], led.spent_run(RUN_ID), inst.state) == (2, 0, "terminated")
        planned = colab.choose(load_plan(SMOKE), load_catalog(), "fp16").time.total_s
        assert run["estimate_s"] == pytest.approx(planned)  # as `budget run` records it: calibrate compares
        assert inst.ended_at - inst.started_at == pytest.approx(42.0, abs=1)  # the worker's elapsed time, 0 CNY
        assert {t["task"] for t in results.tasks(led, RUN_ID)} == {"captions", "documents"}
    finally:
        led.close()


def test_a_zip_of_another_plan_is_refused_with_plan(tmp_path, budget_home, cli):
    job = the_job(budget_home)
    job["tasks"] = job["tasks"][:2]
    code, _, err = cli("import", results_zip(tmp_path / "r.zip", budget_home, job=job), "--plan", SMOKE)
    assert code == 2 and "the zip's job is not plan smoke's (differs in: tasks)" in err
    assert nothing_written(budget_home)


def test_result_lines_that_are_not_json_are_skipped_and_counted_not_believed(tmp_path, budget_home):
    bad = (json.dumps(LINE) + "\nnot json at all\n" + json.dumps(dict(LINE, id="syn-1", task="poetry")) + "\n").encode()
    summary = json.dumps({"run_id": RUN_ID, "complete": True, "tasks": {"captions": {"done": 99, "ok": 99}}}).encode()
    z = results_zip(tmp_path / "r.zip", budget_home, {"results/captions.jsonl": bad, "summary.json": summary})
    got = imported.run(z, None, budget_home, load_catalog())
    assert got.samples_done == 1 and got.state == "done"  # the lines held, not the summary's 99
    assert got.skipped == ["results/captions.jsonl: 2 line(s) skipped: not result lines of captions"]


def _lying(path: Path) -> Path:
    """A deflated 8 MiB of zeros whose headers (local and central) declare 4 KiB: a bomb past a size check."""
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as z:
        z.writestr("worker.log", b"\0" * (8 << 20))
    raw = bytearray(path.read_bytes())
    for sig, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size in each header
        i = raw.rfind(sig)
        struct.pack_into("<I", raw, i + at, 4096)
    path.write_bytes(bytes(raw))
    return path


def _symlink() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("worker.log")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    info.comment = b"/etc/passwd"
    return info


@pytest.mark.parametrize("members, why", [
    ({"../evil.log": b"x"}, "leaves the folder"),
    ({"results/../../evil.jsonl": b"x"}, "leaves the folder"),
    ({"/etc/cron.d/x": b"x"}, "absolute path"),
    ({"C:/x.log": b"x"}, "absolute path"),
    ({"worker.log": None, "sym": _symlink()}, "symbolic link"),
    ({"notes.txt": b"x"}, "not a file the worker writes"),
    ({"results/sub/x.jsonl": b"x"}, "not a file the worker writes"),
    ({"bomb.log": None, "worker.log": b"\0" * (8 << 20)}, "compression ratio over 200:1"),
    ({"job.json": None}, "no job.json"),
])
def test_hostile_zips_are_refused_before_anything_is_written(tmp_path, budget_home, members, why):
    members = {k: v for k, v in members.items() if k != "bomb.log"}
    z = results_zip(tmp_path / "r.zip", budget_home, members)
    with pytest.raises(InputError) as e:
        imported.run(z, None, budget_home, load_catalog())
    assert why in e.value.message and e.value.hint
    assert nothing_written(budget_home)


def test_a_bomb_whose_header_lies_is_caught_while_reading(tmp_path, budget_home, cli):
    z = _lying(results_zip(tmp_path / "r.zip", budget_home, {"worker.log": None}))
    code, _, err = cli("import", z)
    assert code == 2 and "member 'worker.log' is damaged (BadZipFile: Bad CRC-32" in err and "hint:" in err
    assert nothing_written(budget_home)


def test_bytes_are_counted_whatever_the_header_says(tmp_path):
    """The reader stops a member past its declared size or its ratio allowance, even where the zip library
    would hand more over."""
    info = zipfile.ZipInfo("worker.log")
    info.file_size, info.compress_size = 10, 10

    class Endless:
        def read(self, n):
            return b"\0" * n
    read = imported._Reader(Endless(), info, [0], tmp_path / "r.zip")
    with pytest.raises(InputError, match="holds more bytes than its header declares"):
        read(11)
    info.file_size = 1 << 30
    read = imported._Reader(Endless(), info, [0], tmp_path / "r.zip")
    with pytest.raises(InputError, match="expands past 1048576 bytes"):
        while read(1 << 16):
            pass


def test_an_oversize_member_and_a_zip_that_is_not_one_are_refused(tmp_path, budget_home, monkeypatch):
    monkeypatch.setattr(imported, "MEMBER_CAP", 5000)
    z = results_zip(tmp_path / "r.zip", budget_home, {"worker.log": b"x" * 6000})
    with pytest.raises(InputError, match="member 'worker.log' declares 6,000 bytes, over the cap of 5,000"):
        imported.run(z, None, budget_home, load_catalog())
    (tmp_path / "no.zip").write_bytes(b"PK not really")
    with pytest.raises(InputError, match="not a zip archive"):
        imported.run(tmp_path / "no.zip", None, budget_home, load_catalog())
    assert nothing_written(budget_home)
