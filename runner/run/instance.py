"""What a run does on its instance, through a session: arm the watchdog, bootstrap a Python, push the worker
with its job, data and model (and, on a new instance, the lines fetched from the one before), start and
restart the worker, and look at it (fetch its output, probe it, read how it ended). Every method is one
effect of the state machine; none waits - the driver does."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from .. import inbound, plandata
from ..cloud.base import INSTANCE_FILES, START_WATCHDOG, Proc, Session
from ..cloud.remote import push_tree
from ..errors import RemoteError, WorkerError
from ..evaluate import last_line
from ..units import iso
from . import progress
from .liveness import KILL, PROBE
from .messages import EXIT_STOPPED, BootstrapDone, Exited, Inspected, Notice, NotReady, Polled
from .request import Request, ready_python, remote_job, worker_requirements

WORKER_DIR = Path(__file__).resolve().parent.parent / "worker"


UNTRUSTED_EVENTS = 50  # refusals logged per instance
SMALL = 4096  # the instance's one-line files (python.path, interrupted, watchdog.fired, worker.pid)


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode(errors="replace").strip()


class OnInstance:
    """The run's session on its current instance, and what is done there."""

    def __init__(self, req: Request, provider, run_dir: Path, event):
        self.req, self.provider, self.dir, self.event = req, provider, Path(run_dir), event
        self.session: Session | None = None
        self.lease_written = 0
        self.bootstrap: Proc | None = None
        self.refused: dict[str, str] = {}  # what the instance sent that was not taken (logged once), and why

    def close(self) -> None:
        if self.session is not None:
            try:
                self.session.close()
            except Exception:  # noqa: BLE001 - the connection or the instance is gone already
                pass
        self.session, self.lease_written, self.bootstrap, self.refused = None, 0, None, {}

    def write_lease(self, until: float) -> None:
        if self.session is not None and int(until) > self.lease_written:
            self.session.put_bytes(f"{int(until)}\n".encode(), "lease")
            self.lease_written = int(until)

    def arm(self, lease: float, grace_s: int) -> None:
        """Put the watchdog there and start it (a running one is left alone), held to `lease` (the ledger's,
        already shortened to a normal lease after the boot). On a new instance and on every takeover."""
        s, caps = self.session, self.provider.caps
        s.put_file(INSTANCE_FILES / "watchdog.sh", "watchdog.sh", 0o755)
        s.put_bytes((caps.poweroff + "\n").encode(), "poweroff.sh", 0o755)
        # the worker's flush time after a lease runs out; the other half of teardown_s is the power-off
        s.put_bytes(f"{grace_s}\n".encode(), "grace")
        if self.req.spot and caps.notice_url:
            s.put_bytes(f"{caps.notice_url}\n".encode(), "notice_url")
        self.lease_written = 0  # whatever the file says, the ledger's lease is the one that holds
        self.write_lease(lease)
        rc, out = s.run(START_WATCHDOG, timeout=60)
        if rc != 0:
            raise RemoteError(f"cannot start the watchdog: {out.strip()[-200:]}", "check the instance's disk")
        self.event("watchdog", f"armed; lease until {iso(self.lease_written)}")
        if caps.after_watchdog:
            rc, out = s.run(caps.after_watchdog, timeout=60)
            self.event("boot-guard", f"`{caps.after_watchdog}` exit {rc}: {out.strip()[-200:]}")

    # -------------------------------------------------------------------------------- bootstrap

    def needs_bootstrap(self) -> bool:
        return ready_python(self.req, self.provider.caps) is None

    def start_bootstrap(self) -> NotReady:
        self.session.put_file(INSTANCE_FILES / "bootstrap.sh", "bootstrap.sh", 0o755)
        self.session.put_bytes(worker_requirements().encode(), "requirements.txt")
        py = self.provider.caps.python
        self.bootstrap = self.session.start(f"sh ./bootstrap.sh {shlex.quote(py)}".strip())
        return NotReady(why="bootstrap.sh is running")

    def poll_bootstrap(self) -> BootstrapDone | NotReady:
        if self.bootstrap is None:  # a controller that took over mid-bootstrap: run it again (it is idempotent)
            return self.start_bootstrap()
        rc = self.bootstrap.poll()
        if rc is None:
            return NotReady(why="bootstrap.sh is running")
        out = self.bootstrap.output()[-SMALL:].strip()
        last = out.splitlines()[-1][:300] if out else ""
        self.event("bootstrap", f"exit {rc}: {last}")
        return BootstrapDone(rc=rc, last=last)

    def python(self) -> str:
        """The Python that runs the worker there: given, this one (this machine), or what bootstrap.sh found."""
        return ready_python(self.req, self.provider.caps) or _text(self.session.read("python.path", 0, SMALL)) or "python3"

    # -------------------------------------------------------------------------------- push and start

    def push(self) -> None:
        here = self.provider.caps.this_machine
        job = remote_job(self.req.job, self.session.root, here)
        sent = push_tree(self.session, WORKER_DIR, "worker")
        if not here:
            for task in job["tasks"]:
                sent += self._push_dataset(task)
            if self.req.model_path:
                sent += push_tree(self.session, Path(self.req.model_path), "model")
        self.session.put_bytes(json.dumps(job, indent=1, ensure_ascii=False).encode(), "job.json")
        self.session.put_file(INSTANCE_FILES / "start.sh", "start.sh", 0o755)
        self.event("pushed", f"{sent / 1e6:.2f} MB")
        inbound.forget_offsets(self.dir / "out")  # this instance's files start from what is held here
        self._push_results()

    def _push_dataset(self, task: dict) -> int:
        ds = task.get("dataset") or {}
        if ds.get("kind") != "local":
            return 0
        manifest = Path(ds["path"])
        rel = f"data/{task['name']}"
        sent = 0
        for _, p in plandata.media_files(manifest, task["name"]):  # checked before the launch (jobs.build)
            self.session.put_file(manifest.parent / p, f"{rel}/{p}")
            sent += (manifest.parent / p).stat().st_size
        self.session.put_file(manifest, f"{rel}/{manifest.name}")
        task["dataset"] = dict(ds, path=f"{self.session.root}/{rel}/{manifest.name}")
        return sent + manifest.stat().st_size

    def _push_results(self) -> None:
        """What was fetched from an instance before this one: its result lines (the worker resumes after them)
        and its logs (so fetching appends where it left off). Nothing on a run's first instance."""
        out = self.dir / "out"
        names = [*inbound.LOGS, *(f"results/{p.name}" for p in sorted((out / "results").glob("*.jsonl")))]
        held = progress.held(self.dir)
        if not held:
            return
        for name in names:
            if (out / name).is_file():
                self.session.put_file(out / name, f"out/{name}")
        self.event("pushed", f"{held} finished samples back onto the new instance: the worker goes on after them")

    def start_worker(self) -> None:
        rc, out = self.session.run(f"sh ./start.sh {shlex.quote(self.python())}", timeout=60)
        if rc != 0:
            raise WorkerError(f"cannot start the worker: {out.strip()[-300:]}", "see the run's controller.log")
        self.event("started", out.strip())

    def kill_worker(self) -> None:
        self.session.run(KILL, timeout=60)

    # -------------------------------------------------------------------------------- looking at it

    def poll(self) -> Polled | Exited | Notice:
        """Fetch its output, probe it; once it exited, how (read with its files, fetched once more)."""
        out = self.dir / "out"
        self.fetch()
        _, probe = self.session.run(PROBE, timeout=60)
        probe = probe.strip()
        if not probe.startswith("exit "):  # a status that was refused leaves the last beat: a missed heartbeat
            return Polled(probe=probe[:200], beat=inbound.status(out).updated_at)
        self.fetch()
        raw = probe.removeprefix("exit ").strip()
        code = int(raw) if raw.lstrip("-").isdigit() else 1
        self.event("worker", f"exit {code}")
        notice = _text(self.session.read("interrupted", 0, SMALL))
        if notice and code == EXIT_STOPPED:
            return Notice(text=notice)
        status = inbound.status(out)
        return Exited(code=code, fired=bool(_text(self.session.read("watchdog.fired", 0, SMALL))), stopped=status.stopped or "",
                      error=status.error or last_line(out / "worker.stderr.log", 300))

    def fetch(self) -> None:
        """The worker's output, through the boundary; what it refused is an event the first time each file is
        refused on this instance, UNTRUSTED_EVENTS at most (a hostile instance cannot fill the ledger)."""
        tasks = [t["name"] for t in self.req.job.get("tasks") or []]
        for what, why in inbound.fetch(self.session, "out", self.dir / "out", tasks).bad:
            if what in self.refused or len(self.refused) > UNTRUSTED_EVENTS:
                continue
            self.refused[what] = why
            self.event("untrusted", f"the instance sent a bad {what}: {why}; not taken" if
                       len(self.refused) <= UNTRUSTED_EVENTS else "more bad files from the instance: not logged")

    def inspect(self) -> Inspected:
        """On a takeover: did its watchdog already stop it, and was its worker ever started?"""
        return Inspected(fired=bool(_text(self.session.read("watchdog.fired", 0, SMALL))),
                         worker=self.session.read("worker.pid", 0, SMALL) is not None)

