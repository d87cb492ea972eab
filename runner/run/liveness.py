"""Is the worker on the instance still working? The controller's answer each tick, from two facts:
the probe (one shell line run there: the worker's exit code, else whether its process is alive) and
the heartbeat (status.json's `updated_at`, rewritten every heartbeat_s by a thread of the worker).

    exit N  the worker ended (the code is in worker.exit)
    dead    no exit code and no process: killed (kill -9, OOM killer, a reboot) - restart it
    hung    the process lives but its heartbeat has not moved for `stale_s` (stopped, swapping,
            wedged in a driver) - kill its process group, restart it
    ok      otherwise

A restarted worker resumes from its result files (it skips every finished sample). After
`restarts` restarts the run fails instead: a worker that keeps dying is not worth the money.
Pure: the watch is a value, and the caller passes the time."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..cloud.base import OURS

PROBE = OURS + ('if [ -s worker.exit ]; then echo "exit $(cat worker.exit)"; '
                'elif ours worker.pid; then echo alive; else echo gone; fi')
KILL = OURS + ('if ours worker.pid; then kill -KILL -"$p" 2>/dev/null; i=0; '
               'while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done; fi; '
               'rm -f worker.pid; true')
STARTUP_S = 900.0  # before its first heartbeat a worker imports torch and friends: minutes on a cold disk
RESTARTS = 2


def stale_after(heartbeat_s: float, tick_s: float) -> float:
    """How long a silent heartbeat is tolerated: six beats and twelve ticks, and never under a minute
    (a model load can starve the heartbeat thread for a while)."""
    return max(60.0, 6 * heartbeat_s, 12 * tick_s)


@dataclass(frozen=True)
class Watch:
    """What the controller knows of one worker: the last heartbeat seen and since when, whether it ever moved
    (until then the worker may be loading: STARTUP_S), and how often it was restarted."""

    beat: str | None = None
    since: float | None = None
    beating: bool = False
    restarted: int = 0


def verdict(watch: Watch, probe: str, beat: str | None, now: float, stale_s: float) -> tuple[str, Watch]:
    """'exit N', 'dead', 'hung' or 'ok' (see the module doc), and the watch after this look."""
    probe = probe.strip()
    if probe.startswith("exit "):
        return probe, watch
    if probe != "alive":
        return "dead", watch
    if watch.since is None:
        return "ok", replace(watch, beat=beat, since=now)
    if beat != watch.beat:
        return "ok", replace(watch, beat=beat, since=now, beating=True)
    limit = stale_s if watch.beating else max(stale_s, STARTUP_S)
    return ("hung" if now - watch.since > limit else "ok"), watch


def may_restart(watch: Watch, restarts: int = RESTARTS) -> bool:
    return watch.restarted < restarts


def restarted(watch: Watch, now: float) -> Watch:
    """The watch of a worker restarted at `now`: the old beat stays (only a new one counts as a beat)."""
    return replace(watch, restarted=watch.restarted + 1, since=now, beating=False)
