"""Is the worker on the instance still working? The controller's answer each tick, from two facts:
the probe (one shell line run there: the worker's exit code, else whether its process is alive) and
the heartbeat (status.json's `updated_at`, rewritten every heartbeat_s by a thread of the worker).

    exit N  the worker ended (the code is in worker.exit)
    dead    no exit code and no process: killed (kill -9, OOM killer, a reboot) - restart it
    hung    the process lives but its heartbeat has not moved for `stale_s` (stopped, swapping,
            wedged in a driver) - kill its process group, restart it
    ok      otherwise

A restarted worker resumes from its result files (it skips every finished sample). After
`restarts` restarts the run fails instead: a worker that keeps dying is not worth the money."""

from __future__ import annotations

from dataclasses import dataclass

from .cloud.base import OURS

PROBE = OURS + ('if [ -s worker.exit ]; then echo "exit $(cat worker.exit)"; '
                'elif ours worker.pid; then echo alive; else echo gone; fi')
KILL = OURS + ('if ours worker.pid; then kill -KILL -"$p" 2>/dev/null; i=0; '
               'while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done; fi; '
               'rm -f worker.pid; true')


def stale_after(heartbeat_s: float, tick_s: float) -> float:
    """How long a silent heartbeat is tolerated: six beats and twelve ticks, and never under a minute
    (a model load can starve the heartbeat thread for a while)."""
    return max(60.0, 6 * heartbeat_s, 12 * tick_s)


STARTUP_S = 900.0  # before its first heartbeat a worker imports torch and friends: minutes on a cold disk


@dataclass
class Liveness:
    stale_s: float
    restarts: int = 2
    restarted: int = 0
    _beat: str | None = None
    _since: float | None = None
    _beating: bool = False  # the heartbeat moved since this worker started (until then: STARTUP_S)

    def verdict(self, probe: str, beat: str | None, now: float) -> str:
        """'exit N', 'dead', 'hung' or 'ok' (see the module doc); `now` is the controller's clock."""
        probe = probe.strip()
        if probe.startswith("exit "):
            return probe
        if probe != "alive":
            return "dead"
        if self._since is None:
            self._beat, self._since = beat, now
            return "ok"
        if beat != self._beat:
            self._beat, self._since, self._beating = beat, now, True
            return "ok"
        return "hung" if now - self._since > (self.stale_s if self._beating else max(self.stale_s, STARTUP_S)) else "ok"

    def may_restart(self) -> bool:
        return self.restarted < self.restarts

    def restarting(self, now: float) -> None:
        self.restarted += 1
        self._since, self._beating = now, False  # the old beat stays: only a new one counts as a beat
