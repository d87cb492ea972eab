"""The controller's one door to Ray (the gpubudget[ray] extra, imported here only inside functions): connect to a
cluster (`--address`: `ray://head:10001`, `auto`, `host:port`) or start one on this machine for the run, say what
it has (GPUs, else CPUs), make the run's lease actor, submit shard tasks, see which ended, hand leases over, ask
for stops, pull the lines the actor holds, and let go of it all. `RayCluster` is the port the controller
(controller.py) drives; a test gives the controller a fake one."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from planner.errors import InputError

from ..errors import RunError
from . import actor as actormod

HINT = "pip install 'gpubudget[ray]'"
RUNNER_DIR = Path(__file__).resolve().parents[1]  # the runner package: shipped to the nodes as a py_module
TASK_RETRIES = 3  # Ray re-runs a task whose node or worker process died this often (Ray's default)
RPC_S = 10.0      # the longest one call to the lease actor is waited for


def need_ray():
    """The ray module, or one error and the install hint (exit 2)."""
    try:
        import ray
    except ImportError:
        raise InputError("--provider ray needs the ray extra (ray is not installed)", HINT) from None
    return ray


def shares_disk(address: str | None) -> bool:
    """Whether the cluster's nodes read this machine's files: one started here, `auto` (a cluster whose head is
    this machine) or a loopback address. Anything else is another machine."""
    if address in (None, "", "auto", "local"):
        return True
    host = urlsplit(address if "://" in address else f"ray://{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """A cluster address that names a host and port must answer a TCP connection first: ray.init waits for a GCS
    that is not there for minutes, with no bound of its own. Refused or silent: one error, nothing started."""
    import socket

    if address in (None, "", "auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise InputError(f"--address {address!r} is not HOST:PORT, ray://HOST:PORT or auto",
                         "e.g. --address ray://head:10001 (Ray Client) or --address auto on the head node")
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise RunError(f"the Ray cluster at {address} does not answer ({e.strerror or type(e).__name__}); nothing was "
                       "started", "check --address and that the cluster is up (`ray status` on its head)") from None


def runtime_env() -> dict:
    """The job's runtime_env: the runner package uploaded to the cluster and put on every task's and the lease
    actor's path (a remote cluster runs this code, not its own copy)."""
    return {"py_modules": [str(RUNNER_DIR)], "excludes": ["__pycache__", "*.pyc"]}


@dataclass(frozen=True)
class Capacity:
    kind: str       # "gpu" | "cpu": what one task holds
    available: int  # how many of them the cluster has now
    gpu: str        # the GPU's name where Ray says it (accelerator_type), else "GPU"; "cpu" for CPU tasks


class RayCluster:
    def __init__(self, address: str | None):
        self.address = address
        self.ray = None
        self.owned = False   # this process connected (and disconnects at close)
        self.actor = None
        self.refs: dict[str, object] = {}  # task key -> its ObjectRef
        self.fn = None

    # ---------------------------------------------------------------- connecting

    def connect(self) -> RayCluster:
        ray = need_ray()
        self.ray = ray
        if ray.is_initialized():  # this process is a driver already: its job's runtime_env must ship runner/
            return self
        reachable(self.address)
        kw = {"namespace": actormod.NAMESPACE, "log_to_driver": False, "logging_level": "WARNING",
              "configure_logging": False, "runtime_env": runtime_env()}
        try:
            if self.address in (None, "", "local"):
                ray.init(include_dashboard=False, **kw)
            else:
                if shares_disk(self.address) and not self.address.startswith("ray://") and self.address != "auto":
                    kw["_node_ip_address"] = "127.0.0.1"  # a loopback cluster: look for its raylet there, not on
                ray.init(address=self.address, **kw)      # this machine's other address (for ever, otherwise)
        except Exception as e:  # noqa: BLE001 - Ray says why in many exception types
            raise RunError(f"cannot reach the Ray cluster at {self.address or 'this machine'} ({type(e).__name__}: "
                           f"{str(e).strip()[:200]}); nothing was started", "check --address (ray://HEAD:10001 for a "
                           "remote cluster, auto for the one on this machine) and that the cluster is up") from None
        self.owned = True
        return self

    def capacity(self, per_task: str | None) -> Capacity:
        res = self.ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        kind = per_task or ("gpu" if gpus > 0 else "cpu")
        if kind == "gpu":
            names = sorted(k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:"))
            return Capacity("gpu", gpus, names[0] if len(names) == 1 else "GPU")
        return Capacity("cpu", int(res.get("CPU", 0)), "cpu")

    # ---------------------------------------------------------------- the run's actor and tasks

    def start(self, run_id: str, tasks: list[str], lease_s: float, grace_s: float, poll_s: float,
              preload: dict[str, list[str]] | None = None) -> None:
        """Make the run's detached lease actor on the head node, hand it the lines the run wrote before (`preload`,
        a resumed run's; in pieces of at most a pull's size) and start its watch."""
        from .lease import PULL_CAP

        ray = self.ray
        cls = ray.remote(actormod.LeaseActor).options(
            name=actormod.name_of(run_id), namespace=actormod.NAMESPACE, lifetime="detached", num_cpus=0,
            max_concurrency=16, max_restarts=0, resources={"node:__internal_head__": 0.001})
        self.actor = cls.remote(tasks, lease_s, grace_s, poll_s)
        ray.get(self.actor.extend.remote({}), timeout=120)  # made and answering (its runtime_env set up)
        piece: dict[str, list[str]] = {}
        size = 0
        for task, raws in (preload or {}).items():
            for raw in raws:
                if size + len(raw) > PULL_CAP and piece:
                    ray.get(self.actor.preload.remote(piece), timeout=120)
                    piece, size = {}, 0
                piece.setdefault(task, []).append(raw)
                size += len(raw)
        if piece:
            ray.get(self.actor.preload.remote(piece), timeout=120)
        self.actor.watch.remote()

    def submit(self, key: str, spec: dict, kind: str) -> None:
        from .task import run_shard

        ray = self.ray
        if self.fn is None:
            self.fn = ray.remote(run_shard)
        need = {"num_gpus": 1} if kind == "gpu" else {"num_cpus": 1}
        self.refs[key] = self.fn.options(max_retries=TASK_RETRIES, name=f"gpubudget-{spec['run_id']}-shard-{spec['shard']}", **need
                                         ).remote(spec, self.actor)

    def finished(self) -> list[tuple[str, object, str]]:
        """(key, what the task returned, "") or (key, None, why it was lost) for every task that ended."""
        if not self.refs:
            return []
        by_ref = {ref: key for key, ref in self.refs.items()}
        ready, _ = self.ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
        out = []
        for ref in ready:
            key = by_ref[ref]
            del self.refs[key]
            try:
                out.append((key, self.ray.get(ref, timeout=RPC_S), ""))
            except Exception as e:  # noqa: BLE001 - a task lost after its retries, a node gone, an error raised
                out.append((key, None, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"))
        return out

    def _call(self, method: str, *args):
        try:
            return self.ray.get(getattr(self.actor, method).remote(*args), timeout=RPC_S)
        except Exception:  # noqa: BLE001 - the actor gone or slow: the caller decides what no answer means
            return None

    def extend(self, leases: dict[str, float]) -> bool:
        """Hand the leases over (an empty one still says the controller is alive); False: no answer."""
        return self.actor is not None and self._call("extend", leases) is not None

    def stop(self, why: str, keys: list[str] | None = None) -> bool:
        return self.actor is not None and self._call("stop", why, keys) is not None

    def pull(self, cursor: int) -> dict | None:
        return self._call("pull", cursor) if self.actor is not None else None

    def close(self) -> None:
        """Let go: the actor killed (its lines pulled by then), this process's connection closed."""
        if self.actor is not None:
            try:
                self.ray.kill(self.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - gone already
                pass
            self.actor = None
        if self.owned:
            self.ray.shutdown()
            self.owned = False

    # ---------------------------------------------------------------- a run whose controller is gone

    def attach(self, run_id: str) -> bool:
        """The run's lease actor, if it is still there."""
        try:
            self.actor = self.ray.get_actor(actormod.name_of(run_id), namespace=actormod.NAMESPACE)
        except Exception:  # noqa: BLE001 - ValueError when it is gone
            self.actor = None
        return self.actor is not None
