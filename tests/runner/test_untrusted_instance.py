"""Nothing the instance writes back is believed before runner/inbound.py took it (issue 22, findings 3-8): what
it sends is planted for real - in the scripted cloud's files (the real driver, ledger and fetch read them), on
a real local instance directory, in S3 objects - and what the controller, `budget stop`, `budget status`,
`budget logs` and the ledger then do is checked."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner import inbound
from runner.cloud import registry
from runner.cloud.remote import LocalSession
from runner.inbound import fetch
from runner.money import results
from runner.procs import proc_start
from runner.run import commands, progress
from tests.runner.scripted import LINE, Crash, Rig, crash_at

pytestmark = pytest.mark.timeout(60)


def plant(rig: Rig, rel: str, data: bytes, *, always: bool = True):
    """A kill hook that writes `data` into the running instance's `rel` once samples come (and, with `always`,
    instead of every status the worker writes after)."""
    done = []

    def hook(where: str) -> None:
        if where == "samples" and not done:
            inst = rig.world.running()[0]
            if always and rel == "out/status.json":
                inst._status = lambda now, **extra: inst.files.__setitem__(rel, data)
            inst.files[rel] = data
            done.append(inst.pid)
    return hook, done


def events(rig: Rig, kind: str) -> list[str]:
    return [e["detail"] for e in rig.led.events(rig.run_id) if e["kind"] == kind]


def scripted_provider(monkeypatch, rig: Rig) -> None:
    monkeypatch.setitem(registry.PROVIDERS, "scripted", registry.Entry("scripted", (), True, False, False,
                                                                       lambda cfg, home, region, clock: rig.provider))


@pytest.mark.parametrize("doc", [b"[1, 2]", b'{"tasks": "many", "updated_at": 5}', b'{"tasks": {"../x": {}}}',
                                 b'{"eta_s": "soon"}', b"{" * 5000])
def test_a_status_of_the_wrong_shape_is_refused_and_budget_stop_still_works(fast_home, monkeypatch, doc):
    """Finding 3: status.json `[1, 2]` killed the controller and then `budget stop`. Now it is not taken - an
    event says so, the last good status stays (a missed heartbeat) - and a stop after the controller died
    fetches, terminates and settles."""
    rig = Rig(fast_home, samples=400)
    scripted_provider(monkeypatch, rig)
    hook, planted = plant(rig, "out/status.json", doc)

    def kill(where: str) -> None:
        hook(where)
        if planted and events(rig, "untrusted"):  # killed after it was refused
            raise Crash(where)
    with pytest.raises(Crash):
        rig.driver(kill=kill).run()
    assert events(rig, "untrusted") and "status.json" in events(rig, "untrusted")[0]
    assert isinstance(json.loads((rig.dir / "out" / "status.json").read_bytes()), dict)
    rig.led.update_run(rig.run_id, controller_pid=None)
    run = commands.stop(rig.run_id, fast_home, clock=rig.clock)
    assert (run["state"], run["reason"]) == ("stopped", "user")
    assert run["samples_done"] == len(set(rig.held_ids())) > 0
    rig.check()


def test_a_malformed_status_is_a_missed_heartbeat_and_the_liveness_rule_decides(fast_home):
    """A worker whose status turns to garbage while its process lives is, after the stale limit, hung: it is
    restarted - the bad file is never believed as a beat."""
    rig = Rig(fast_home, samples=4000)
    hook, planted = plant(rig, "out/status.json", b'{"updated_at": 7}')
    driver, t0 = rig.driver(kill=hook), rig.clock.now()
    driver.start()
    while driver.step() and not any("heartbeat" in d for d in events(rig, "worker")) and rig.clock.now() < t0 + 3600:
        pass
    assert planted and any("heartbeat has not moved" in d for d in events(rig, "worker")), events(rig, "worker")
    assert events(rig, "untrusted")


def test_claimed_progress_is_not_believed(fast_home):
    """Finding 5: status.json says done 999,999,999 and summary.json claims 5000/5000 - the ledger counts the
    lines held, the tasks table and the cost per sample are computed from them."""
    rig = Rig(fast_home, samples=49)
    claim = {"updated_at": "x", "tasks": {"captions": {"done": 999_999_999, "ok": 999_999_999, "total": 999_999_999}}}
    hook, _ = plant(rig, "out/status.json", json.dumps(claim).encode(), always=False)
    driver = rig.driver(kill=hook)
    assert driver.run() == "done"
    run = rig.run_row()
    assert (run["samples_done"], run["samples_total"]) == (49, 49)
    # the instance's summary claimed 5000 answered samples of 5000: the ledger's come from the lines
    (rig.dir / "out" / "summary.json").write_text(json.dumps(
        {"run_id": rig.run_id, "complete": True, "tasks": {"captions": {"kind": "caption", "done": 5000, "ok": 5000,
                                                                         "total": 5000, "bleu4": 1.0}}}))
    results.record_tasks(rig.led, rig.run_id, rig.dir / "out", rig.req.job)
    [task] = results.tasks(rig.led, rig.run_id)
    assert (task["samples"], task["ok"]) == (49, 49)
    summary = json.loads(task["summary"])
    assert summary["reported_by_instance"]["done"] == 5000 and summary["bleu4"] < 1.0
    assert progress.count(rig.dir, rig.run_id) == (49, 49)


def test_lines_of_the_wrong_shape_twice_or_past_the_plan_are_not_counted(tmp_path):
    """Only valid lines of the job's tasks count, each sample id once, never past what the task asks."""
    run_dir = tmp_path / "r"
    (run_dir / "out" / "results").mkdir(parents=True)
    (run_dir / "request.json").write_text(json.dumps({"job": {"tasks": [
        {"name": "a", "kind": "caption", "samples": 3},
        {"name": "sweep", "kind": "memory_sweep", "samples": 1, "resolutions": [[448, 448], [896, 896]]}]}}))
    good = [json.dumps({"id": str(i), "task": "a", **LINE}) for i in range(5)]
    bad = ["[1]", '{"id": 1, "task": "a", "status": "ok"}', '{"id": "9", "task": "b", "status": "ok"}',
           '{"id": "8", "task": "a", "status": "great"}', "not json"]
    (run_dir / "out" / "results" / "a.jsonl").write_text("\n".join([good[0], good[0], *bad, *good[1:]]) + "\n")
    (run_dir / "out" / "results" / "other.jsonl").write_text(good[0].replace('"a"', '"other"') + "\n")
    (run_dir / "out" / "results" / "sweep.jsonl").write_text("".join(  # a sweep: one line per resolution
        json.dumps({"id": f"{r}-0", "task": "sweep", "status": "ok"}) + "\n" for r in ("448x448", "896x896", "1x1")))
    assert progress.count(run_dir) == (5, 5)


class Hostile(LocalSession):
    """A session to an instance that names files itself (an SFTP server answers any names it likes)."""

    def __init__(self, root: Path, extra: dict[str, str]):
        super().__init__(root)
        self.extra = extra  # listed name -> the file under root it reads

    def listdir(self, rel: str) -> list[str]:
        return super().listdir(rel) + (list(self.extra) if rel.endswith("results") else [])

    def _real(self, rel: str) -> str:
        for name, real in self.extra.items():
            if rel.endswith("/" + name):
                return real
        return rel

    def size(self, rel: str):
        return super().size(self._real(rel))

    def read(self, rel: str, offset: int = 0, length: int | None = None):
        return super().read(self._real(rel), offset, length)


def test_names_the_instance_chooses_never_leave_the_run(tmp_path):
    """Finding 6: a listed result file `../../money.jsonl` was appended to the run's money journal."""
    inst, run = tmp_path / "inst", tmp_path / "run"
    (inst / "out" / "results").mkdir(parents=True)
    (inst / "evil.jsonl").write_text('{"at": 1, "terminated": {"provider_id": "i-1", "at": 0}}\n')
    run.mkdir()
    (run / "money.jsonl").write_text("")
    got = fetch(Hostile(inst, {"../../money.jsonl": "evil.jsonl", "..": "evil.jsonl",
                                       ".hidden.jsonl": "evil.jsonl"}), "out", run / "out")
    assert (run / "money.jsonl").read_text() == ""
    assert [p.name for p in (run / "out").rglob("*") if p.is_file() and p.name != inbound.OFFSETS] == []
    assert {what for what, _ in got.bad} == {"results/../../money.jsonl", "results/..", "results/.hidden.jsonl"}


def test_a_line_over_the_cap_is_skipped_a_read_at_a_time_and_the_lines_after_it_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(inbound, "LINE_CAP", 1000)
    monkeypatch.setattr(inbound, "READ_CAP", 4096)
    inst, out = tmp_path / "inst", tmp_path / "run" / "out"
    res = inst / "out" / "results"
    res.mkdir(parents=True)
    line = json.dumps({"id": "1", "task": "a", **LINE}) + "\n"
    (res / "a.jsonl").write_text(line + "x" * 20000)  # a line over the cap, still being "written"
    session = LocalSession(inst)
    for _ in range(8):
        fetch(session, "out", out)
    assert (out / "results" / "a.jsonl").read_text() == line
    with open(res / "a.jsonl", "a") as f:
        f.write("\n" + line.replace('"1"', '"2"'))
    for _ in range(3):
        fetch(session, "out", out)
    assert [json.loads(x)["id"] for x in (out / "results" / "a.jsonl").read_text().splitlines()] == ["1", "2"]


RSS_PROBE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from runner import inbound
    from runner.cloud.remote import LocalSession
    from runner.money import results
    from runner.run import progress
    inst, run = Path(sys.argv[1]), Path(sys.argv[2])
    job = json.loads((run / "request.json").read_text())["job"]
    session = LocalSession(inst)
    bad = set()
    for _ in range(int(sys.argv[3])):  # ticks of the controller: fetch, count, the status it shows
        bad |= {what for what, _ in inbound.fetch(session, "out", run / "out").bad}
        progress.count(run)
        inbound.status(run / "out")
    results.summarize(run / "out", job)
    # this process's peak RSS (VmHWM: getrusage's maxrss would carry a big parent's from before the exec)
    hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    print(json.dumps({"rss_kib": hwm, "bad": sorted(bad), "held": progress.held(run)}))
""")


def test_controller_memory_stays_bounded_with_a_3_gib_results_file_and_a_1_gib_status(tmp_path):
    """Finding 4: a sparse 3 GiB results file with no newline took the controller to 2.8 GB RSS, a 1 GiB
    status.json to 3.1 GB. Planted for real (sparse files on a local instance), the controller's fetch, count
    and status reads stay under 300 MB (a child process's own peak RSS, VmHWM)."""
    inst, run = tmp_path / "inst", tmp_path / "run"
    res = inst / "out" / "results"
    res.mkdir(parents=True)
    (run / "out").mkdir(parents=True)
    (run / "request.json").write_text(json.dumps({"job": {"tasks": [{"name": "a", "kind": "caption", "samples": 9},
                                                                     {"name": "b", "kind": "caption", "samples": 9}]}}))
    (res / "b.jsonl").write_text(json.dumps({"id": "1", "task": "b", **LINE}) + "\n")
    for path, size in ((res / "a.jsonl", 3 << 30), (inst / "out" / "status.json", 1 << 30),
                       (inst / "out" / "worker.log", 3 << 30)):
        with open(path, "wb") as f:
            f.truncate(size)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    p = subprocess.run([sys.executable, "-c", RSS_PROBE, str(inst), str(run), "12"], capture_output=True, text=True,
                       env=env, timeout=50, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(p.stdout)
    assert doc["rss_kib"] < 300 * 1024, doc
    assert doc["held"] == 1 and {"status.json", "results/a.jsonl"} <= set(doc["bad"]), doc
    assert (run / "out" / "worker.log").stat().st_size <= inbound.LOG_CAP


@pytest.mark.parametrize("summary", [b"[1, 2]", b'{"done": "many", "tasks": {"captions": {"done": "many"}}}',
                                     b'{"complete": true, "tasks": {"captions": {"done": 5000, "total": 5000}}}'])
def test_an_unattended_runs_s3_documents_of_any_shape_are_collected_cleanly(fast_home, monkeypatch, summary):
    """Finding 3: an S3 summary.json of `[1, 2]` or `"done": "many"` made `budget status RUN` an internal error;
    a summary that claims more than came back does not make the run done."""
    from dataclasses import replace

    from tests.runner.scripted import CAPS

    rig = Rig(fast_home, samples=20, unattended=True, caps=replace(CAPS, uploads=True))
    scripted_provider(monkeypatch, rig)
    assert rig.driver().run() == "running"
    rig.clock.advance(60)
    rig.world.advance()
    inst = rig.world.instances["i-0000"]
    inst.files["out/summary.json"] = summary
    inst.files["out/results/captions.jsonl"] = b"".join(inst.files["out/results/captions.jsonl"].splitlines(True)[:7])
    doc = commands.describe(fast_home, rig.run_id, clock=rig.clock)
    assert doc["samples_done"] == 7 and doc["state"] == "failed"
    assert [t["samples"] for t in doc["tasks"]] == [7]
    rig.check()


def test_s3_objects_are_streamed_through_the_boundary(tmp_path):
    """S3 bodies are read a capped piece at a time: a 2 MiB summary is refused, a 40 MiB log is cut at its cap
    here, names outside the run are not taken."""
    reads = []

    class Body(io.BytesIO):
        def read(self, n=-1):
            assert n is not None and n >= 0, "read whole"
            reads.append(n)
            return super().read(n)
    out = tmp_path / "out"
    assert "over" in inbound.take_object("summary.json", Body(b" " * (2 << 20)).read, out)
    assert not (out / "summary.json").exists()
    assert "not taken" in inbound.take_object("results/../../x.jsonl", Body(b"").read, out)
    assert inbound.take_object("worker.log", Body(b"x" * 1000).read, out) == ""
    assert reads and max(reads) <= max(inbound.DOC_CAP + 1, inbound.READ_CAP)


def test_budget_logs_escapes_what_the_instance_wrote(fast_home):
    """Finding 7: terminal escapes in worker.log reached the user's terminal raw."""
    rig = Rig(fast_home, samples=3)
    (rig.dir / "out" / "worker.log").write_bytes("loading\x1b[2J\x1b]0;pwned\x07 model\u202e\rok\n".encode())
    rig.led.update_run(rig.run_id, state="done")
    lines = list(commands.log_lines(fast_home, rig.run_id, follow=False))
    assert "[worker] loading\\x1b[2J\\x1b]0;pwned\\x07 model\\u202e\\x0dok" in lines
    assert all("\x1b" not in x and "\x07" not in x and "\r" not in x for x in lines)


def test_a_pending_stop_takes_over_as_soon_as_its_controller_dies(fast_home, monkeypatch):
    """Finding 8: `budget stop` waited its whole 300 s on a controller that had died; now it waits on the
    controller's life too (a real process, killed while the stop waits) and takes over at once."""
    rig = Rig(fast_home, samples=400)
    scripted_provider(monkeypatch, rig)
    with pytest.raises(Crash):
        rig.driver(kill=crash_at("samples")).run()
    controller = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        rig.led.update_run(rig.run_id, controller_pid=controller.pid, controller_start=proc_start(controller.pid))
        start, sleep = rig.clock.monotonic(), rig.clock.sleep

        def dying(s: float) -> None:
            if rig.clock.monotonic() - start >= 2:
                controller.kill()
                controller.wait()
            sleep(s)
        monkeypatch.setattr(rig.clock, "sleep", dying)
        run = commands.stop(rig.run_id, fast_home, clock=rig.clock)
    finally:
        controller.kill()
        controller.wait()
    assert rig.clock.monotonic() - start < 10  # not the 300 s wait
    assert (run["state"], run["reason"]) == ("stopped", "user")
    assert any("taken over" in d for d in events(rig, "stop"))
    rig.check()


def test_a_rented_host_that_refuses_the_connection_fails_in_seconds(fast_home, tmp_path):
    """Finding 11: an SSH host refusing the connection took 34 s to fail. A real refusal (a closed loopback
    port) is told apart from silence, and a machine that is up before the run (rented) is given REFUSED_S, not
    its whole ssh_wait_s; a cloud instance, which refuses while it boots, still waits."""
    import socket
    from dataclasses import replace

    from runner.cloud.base import Endpoint
    from runner.errors import RefusedError, RemoteError
    from tests.runner.scripted import CAPS, Script, World

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "known_hosts").write_text("")
    with pytest.raises(RefusedError):
        from runner.cloud.remote import SshSession
        SshSession.connect(Endpoint(host="127.0.0.1", port=port, user="u", key_file=str(tmp_path / "k"),
                                    known_hosts=str(tmp_path / "known_hosts")), "r", timeout_s=5)

    rented = Rig(fast_home, World(script=Script(refuse=10_000)), samples=5, ssh_wait_s=30,
                 caps=replace(CAPS, rented=True))
    t0 = rented.clock.now()
    with pytest.raises(RemoteError, match="refused"):
        rented.driver().run()
    assert rented.clock.now() - t0 < 15 < rented.req.ssh_wait_s  # boot, REFUSED_S, the teardown; not 30 s
    assert rented.led.spent_run(rented.run_id) == 0
    booting = Rig(tmp_path / "h2", World(script=Script(refuse=20)), samples=5, ssh_wait_s=600, run_id="run-2")
    assert booting.driver().run() == "done"


def test_scores_a_line_claims_are_computed_again_from_its_prediction(tmp_path):
    """A document line claiming ANLS 1.0 for a wrong answer, a poetry line claiming every keyword, an fp16 check
    claiming agreement: the controller's summary scores each line again with the worker's own code."""
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    m = {k: v for k, v in LINE.items() if k not in ("kind", "prediction", "references")}
    rows = {"doc": [{"id": "1", "prediction": "42.00", "answers": ["$17.50"], "anls": 1.0},
                    {"id": "2", "prediction": "17.50", "answers": ["17.50"], "anls": 0.0},
                    {"id": "3", "prediction": ["not", "text"], "answers": ["x"], "anls": 1.0}],
            "poem": [{"id": "1", "prediction": "山", "keywords": ["月", "山"], "keyword_recall": 1.0}],
            "check": [{"id": "1", "prediction": "a dog", "quantized_prediction": "a cat", "agree": True,
                       "agreement_f1": 1.0}]}
    for task, lines in rows.items():
        (out / "results" / f"{task}.jsonl").write_text(
            "".join(json.dumps({"task": task, **m, **x}) + "\n" for x in lines))
    job = {"tasks": [{"name": "doc", "kind": "document", "samples": 3}, {"name": "poem", "kind": "poetry", "samples": 1},
                     {"name": "check", "kind": "fp16_verify", "samples": 1, "of_task": "doc"}]}
    s = results.summarize(out, job)
    assert (s["doc"]["ok"], s["doc"]["anls"]) == (3, 0.5)  # (0 + 1) / 2 scored; the unscorable one has none
    assert s["poem"]["keyword_recall"] == 0.5
    assert (s["check"]["agreement"], s["check"]["agreement_f1"]) == (0, 0.5)


def test_lines_that_pass_the_shape_but_not_the_kind_never_crash_or_bloat_the_summary(tmp_path):
    """A memory-sweep line with `"resolution": [5]` crashed the controller's summary; `["a", 200000000]` made a
    200 MB string in its sort; NaN, Infinity or 1e400 would poison every mean: the first two are left out of the
    sweep's table, the others are not lines at all."""
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    m = {k: v for k, v in LINE.items() if k not in ("kind", "prediction", "references")}
    sweep = [{"id": "a", "resolution": [5]}, {"id": "b", "resolution": ["a", 200000000]},
             {"id": "c", "resolution": [448, 448]}]
    raw = [json.dumps({"task": "sweep", **m, **x}) for x in sweep]
    raw += ['{"id": "d", "task": "sweep", "status": "ok", "latency_s": NaN}',
            '{"id": "e", "task": "sweep", "status": "ok", "latency_s": Infinity}',
            '{"id": "f", "task": "sweep", "status": "ok", "latency_s": 1e400}',
            '{"id": "g", "task": "sweep", "status": "ok", "decode_tokens": 123456789012345678901234567890}']
    (out / "results" / "sweep.jsonl").write_text("\n".join(raw) + "\n")
    job = {"tasks": [{"name": "sweep", "kind": "memory_sweep", "samples": 5, "resolutions": [[448, 448]]}]}
    s = results.summarize(out, job)["sweep"]
    assert s["done"] == 3 and [r["resolution"] for r in s["by_resolution"]] == [[448, 448]]
    assert s["largest_ok"] == [448, 448]


def test_a_long_error_is_cut_not_a_reason_to_refuse_the_status(tmp_path):
    """The worker writes its error whole: a 10,000-character one must not make status.json refused (its real
    failure reason lost) - the string is cut to TEXT_CAP."""
    inst = tmp_path / "inst"
    (inst / "out").mkdir(parents=True)
    (inst / "out" / "status.json").write_text(json.dumps({"updated_at": "t", "error": "DatasetError: " + "x" * 10_000}))
    got = fetch(LocalSession(inst), "out", tmp_path / "run" / "out")
    assert not got.bad and len(inbound.status(tmp_path / "run" / "out").error) == inbound.TEXT_CAP


def test_only_the_jobs_result_files_are_taken_and_refusals_are_capped(tmp_path):
    inst, out = tmp_path / "inst", tmp_path / "run" / "out"
    (inst / "out" / "results").mkdir(parents=True)
    for task in ("a", "extra"):
        (inst / "out" / "results" / f"{task}.jsonl").write_text(json.dumps({"id": "1", "task": task, **LINE}) + "\n")
    bad = {f"../x{k}.jsonl": "out/results/a.jsonl" for k in range(100)}
    got = fetch(Hostile(inst, bad), "out", out, ["a"])
    assert sorted(p.name for p in (out / "results").iterdir()) == ["a.jsonl"]
    assert len(got.bad) == inbound.REFUSALS_CAP + 1 and got.bad[-1][0] == "..."


def test_an_s3_results_object_with_a_torn_last_line_counts_it_skipped(tmp_path):
    line = json.dumps({"id": "1", "task": "a", **LINE})
    why = inbound.take_object("results/a.jsonl", io.BytesIO((line + "\n" + line[:20]).encode()).read, tmp_path)
    assert "1 line(s) skipped" in why and (tmp_path / "results" / "a.jsonl").read_text() == line + "\n"
