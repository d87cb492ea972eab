"""Sessions on an instance: what the orchestrator does there, behind one small interface with two
implementations - `SshSession` (paramiko: key auth, pinned host key, SFTP) and `LocalSession` (the
`local` provider: a directory and subprocesses on this machine). Paths are relative to the session's
run directory on the instance. paramiko exceptions are translated here into RemoteError.

What a session reads from the instance is believed only after runner/inbound.py took it (the one
boundary: names, size caps, shapes - `inbound.fetch` brings the worker's output back through it); the
output of a started command is kept to its last PROC_KEEP bytes here."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from ..errors import NotReadyError, RefusedError, RemoteError
from ..units import duration
from .base import Endpoint, Proc

PROC_KEEP = 64 << 10  # what is kept of a started command's output
HINT_UNREACHABLE = ("check that the instance is up, that its port is open to this machine, and the key "
                    "(BUDGET_SSH_ADDRESS=host:port overrides the address, e.g. through a bastion)")


class LocalSession:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.address = "localhost"

    def run(self, cmd: str, timeout: float = 120) -> tuple[int, str]:
        try:
            p = subprocess.run(["sh", "-c", cmd], cwd=self.root, capture_output=True, text=True, timeout=timeout,
                               check=False)
        except subprocess.TimeoutExpired:
            return 124, f"timed out after {duration(timeout)}"
        return p.returncode, p.stdout + p.stderr

    def start(self, cmd: str) -> Proc:
        log = self.root / ".proc.log"
        f = open(log, "wb")
        p = subprocess.Popen(["sh", "-c", cmd], cwd=self.root, stdout=f, stderr=subprocess.STDOUT)

        def poll():
            rc = p.poll()
            if rc is not None and not f.closed:
                f.close()
            return rc
        def output():
            with open(log, "rb") as fh:
                fh.seek(max(0, log.stat().st_size - PROC_KEEP))
                return fh.read(PROC_KEEP).decode(errors="replace")
        return Proc(poll, output)

    def put_file(self, local: Path, rel: str, mode: int | None = None) -> None:
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, dest)
        if mode is not None:
            dest.chmod(mode)

    def put_bytes(self, data: bytes, rel: str, mode: int | None = None) -> None:
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(data)
        if mode is not None:
            tmp.chmod(mode)
        tmp.replace(dest)

    def size(self, rel: str) -> int | None:
        try:
            return (self.root / rel).stat().st_size
        except OSError:
            return None

    def read(self, rel: str, offset: int = 0, length: int | None = None) -> bytes | None:
        try:
            with open(self.root / rel, "rb") as f:
                f.seek(offset)
                return f.read() if length is None else f.read(length)
        except OSError:
            return None

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self.root / rel))
        except OSError:
            return []

    def close(self) -> None:
        pass


def _refused(e: BaseException) -> bool:
    """Whether a connect failed because every address refused it (paramiko's NoValidConnectionsError holds one
    error per address)."""
    errors = getattr(e, "errors", None)
    if isinstance(errors, dict) and errors:
        return all(isinstance(x, ConnectionRefusedError) for x in errors.values())
    return isinstance(e, ConnectionRefusedError)


def _remote_path(path: str) -> str:
    """A shell word for `path` with a leading ~ expanded by the remote shell."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + shlex.quote(path[1:]) if len(path) > 1 else '"$HOME"'
    return shlex.quote(path)


class SshSession:
    """An SSH session on the instance. Host keys come only from the endpoint's known_hosts file and
    anything else is rejected (paramiko's RejectPolicy) - there is no trust-on-first-use path."""

    def __init__(self, client, root: str, address: str):
        self.client = client
        self.sftp = client.open_sftp()
        self.root = root
        self.address = address

    @classmethod
    def connect(cls, ep: Endpoint, root: str, timeout_s: float = 10.0) -> SshSession:
        """One attempt to connect (at most `timeout_s` for each of TCP, banner and auth) and make `root`.
        NotReadyError while the instance boots (refused, timed out, no banner yet, keys not yet installed):
        the caller decides whether to wait and try again. A host key that does not match is RemoteError."""
        import paramiko

        client = paramiko.SSHClient()
        client.load_host_keys(ep.known_hosts)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        where = f"{ep.user}@{ep.host}:{ep.port}"
        try:
            client.connect(ep.host, ep.port, username=ep.user, key_filename=ep.key_file, timeout=timeout_s,
                           banner_timeout=timeout_s, auth_timeout=timeout_s, allow_agent=False, look_for_keys=False)
        except paramiko.BadHostKeyException as e:
            client.close()
            raise RemoteError(f"{ep.host}:{ep.port} presented a host key that does not match the pinned one "
                              f"({e.key.get_name()} {e.key.fingerprint})",
                              "someone may be intercepting the connection; check the address, or the "
                              "known_hosts entry if the host was reinstalled") from None
        except paramiko.AuthenticationException as e:
            client.close()
            raise NotReadyError(f"{where}: authentication failed for {ep.user} ({e})", HINT_UNREACHABLE) from None
        except paramiko.SSHException as e:
            client.close()
            if "known_hosts" in str(e):
                raise RemoteError(f"{ep.host}:{ep.port} is not in {ep.known_hosts}; its host key cannot be "
                                  "verified", "add the host's key to known_hosts (ssh-keyscan, checked against "
                                  "the provider's console) - gpubudget never trusts a key on first use") from None
            raise NotReadyError(f"{where}: {e or e.__class__.__name__}", HINT_UNREACHABLE) from None
        except (TimeoutError, OSError, EOFError) as e:
            client.close()
            why = getattr(e, "strerror", None) or str(e) or e.__class__.__name__
            if _refused(e):
                raise RefusedError(f"{where}: connection refused", HINT_UNREACHABLE) from None
            raise NotReadyError(f"{where}: {why}", HINT_UNREACHABLE) from None
        try:
            _, out, _ = client.exec_command(f"mkdir -p {_remote_path(root)} && cd {_remote_path(root)} && pwd",
                                            timeout=60)
            resolved = out.read(4096).decode(errors="replace").strip()
        except (OSError, paramiko.SSHException) as e:
            client.close()
            raise RemoteError(f"{where}: cannot create {root} ({e})", "check the disk and permissions") from None
        if not resolved.startswith("/"):
            client.close()
            raise RemoteError(f"{where}: cannot create {root}", "check the disk and permissions on the instance")
        return cls(client, resolved, where)

    def _abs(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _err(self, what: str, e: Exception) -> RemoteError:
        return RemoteError(f"{self.address}: {what} failed ({e.__class__.__name__}: {e})",
                           "the connection may have dropped; the worker keeps running on the instance")

    def run(self, cmd: str, timeout: float = 120) -> tuple[int, str]:
        import paramiko
        try:
            chan = self.client.get_transport().open_session(timeout=30)
            chan.set_combine_stderr(True)
            chan.settimeout(timeout)
            chan.exec_command(f"cd {shlex.quote(self.root)} && {cmd}")
            out = b""
            while True:
                chunk = chan.recv(65536)
                if not chunk:
                    break
                out += chunk
            return chan.recv_exit_status(), out.decode(errors="replace")
        except TimeoutError:
            return 124, f"timed out after {duration(timeout)}"
        except (OSError, EOFError, paramiko.SSHException, AttributeError) as e:
            raise self._err(f"running {cmd.split()[0]}", e) from None

    def start(self, cmd: str) -> Proc:
        import paramiko
        try:
            chan = self.client.get_transport().open_session(timeout=30)
            chan.set_combine_stderr(True)
            chan.exec_command(f"cd {shlex.quote(self.root)} && {cmd}")
        except (OSError, EOFError, paramiko.SSHException, AttributeError) as e:
            raise self._err(f"starting {cmd.split()[0]}", e) from None
        buf = bytearray()

        def drain():  # what is kept of a command's output is its last 64 KiB (the instance writes it)
            while chan.recv_ready():
                buf.extend(chan.recv(65536))
                del buf[:-PROC_KEEP]

        def poll():
            try:
                drain()
                if chan.exit_status_ready():
                    drain()
                    return chan.recv_exit_status()
            except (OSError, EOFError, paramiko.SSHException) as e:
                raise self._err(f"waiting for {cmd.split()[0]}", e) from None
            if chan.closed:  # the connection dropped before the command said how it ended
                raise self._err(f"waiting for {cmd.split()[0]}", EOFError("channel closed"))
            return None
        return Proc(poll, lambda: (drain(), buf.decode(errors="replace"))[1])

    def _mkdirs(self, rel_dir: str) -> None:
        path = self.root
        for part in [p for p in rel_dir.split("/") if p]:
            path = f"{path}/{part}"
            try:
                self.sftp.stat(path)
            except FileNotFoundError:
                self.sftp.mkdir(path)

    def put_file(self, local: Path, rel: str, mode: int | None = None) -> None:
        def op():
            self._mkdirs(rel.rpartition("/")[0])
            self.sftp.put(str(local), self._abs(rel) + ".part")
            if mode is not None:
                self.sftp.chmod(self._abs(rel) + ".part", mode)
            self.sftp.posix_rename(self._abs(rel) + ".part", self._abs(rel))
        self._sftp(f"uploading {rel}", op, missing_ok=False)

    def put_bytes(self, data: bytes, rel: str, mode: int | None = None) -> None:
        def op():
            self._mkdirs(rel.rpartition("/")[0])
            with self.sftp.open(self._abs(rel) + ".part", "wb") as f:
                f.write(data)
            if mode is not None:
                self.sftp.chmod(self._abs(rel) + ".part", mode)
            self.sftp.posix_rename(self._abs(rel) + ".part", self._abs(rel))
        self._sftp(f"writing {rel}", op, missing_ok=False)

    def _sftp(self, what: str, op, missing=None, missing_ok: bool = True):
        """Run an SFTP call: a missing file is `missing`; a broken connection is RemoteError (paramiko
        raises OSError, EOFError or SSHException for those, depending on where it notices)."""
        import paramiko
        try:
            return op()
        except FileNotFoundError as e:
            if not missing_ok:
                raise self._err(what, e) from None
            return missing
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise self._err(what, e) from None

    def size(self, rel: str) -> int | None:
        return self._sftp(f"stat {rel}", lambda: self.sftp.stat(self._abs(rel)).st_size)

    def read(self, rel: str, offset: int = 0, length: int | None = None) -> bytes | None:
        def op():
            with self.sftp.open(self._abs(rel), "rb") as f:
                f.seek(offset)
                return f.read() if length is None else f.read(length)
        return self._sftp(f"reading {rel}", op)

    def listdir(self, rel: str) -> list[str]:
        return self._sftp(f"listing {rel}", lambda: sorted(self.sftp.listdir(self._abs(rel))), [])

    def close(self) -> None:
        try:
            self.sftp.close()
        finally:
            self.client.close()


# ---------------------------------------------------------------------- shared steps


def push_tree(session, local: Path, rel: str, skip: tuple[str, ...] = ("__pycache__",)) -> int:
    """Upload a directory tree; returns bytes sent."""
    sent = 0
    for path in sorted(Path(local).rglob("*")):
        if path.is_file() and not any(part in skip or part.endswith(".pyc") for part in path.parts):
            session.put_file(path, f"{rel}/{path.relative_to(local).as_posix()}")
            sent += path.stat().st_size
    return sent
