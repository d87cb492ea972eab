"""An SSH session on a real OpenSSH sshd on loopback: one attempt at a time (the driver waits between them),
a host that does not answer yet is NotReadyError, a host key other than the pinned one is refused for good -
gpubudget never trusts a key on first use - and a session does its work in its run directory."""

from __future__ import annotations

import getpass
import socket
from pathlib import Path

import pytest

from runner.cloud.base import Endpoint
from runner.cloud.remote import SshSession
from runner.errors import NotReadyError, RemoteError


def _endpoint(host, known: Path) -> Endpoint:
    key = str(Path(host.known_hosts).parent / "id_ed25519")
    return Endpoint("127.0.0.1", host.sshd.port, getpass.getuser(), key, str(known))


def test_a_session_works_in_its_run_directory(ssh_host):
    s = SshSession.connect(_endpoint(ssh_host, ssh_host.known_hosts), str(ssh_host.remote_dir / "runs" / "r1"))
    try:
        s.put_bytes(b"hello\n", "out/a.txt")
        assert s.read("out/a.txt") == b"hello\n" and s.size("out/a.txt") == 6 and s.listdir("out") == ["a.txt"]
        assert s.run("cat out/a.txt") == (0, "hello\n")
        assert s.read("missing") is None
    finally:
        s.close()
    assert (ssh_host.remote_dir / "runs" / "r1" / "out" / "a.txt").read_text() == "hello\n"


def test_a_host_key_other_than_the_pinned_one_is_refused(ssh_host, tmp_path):
    from runner.cloud.aws import make_key

    known = tmp_path / "known_hosts_other"
    known.write_text(f"[127.0.0.1]:{ssh_host.sshd.port} {make_key().public_line}\n")  # someone else's key
    with pytest.raises(RemoteError, match="does not match the pinned one") as e:
        SshSession.connect(_endpoint(ssh_host, known), str(ssh_host.remote_dir / "runs" / "r2"))
    assert not isinstance(e.value, NotReadyError)  # never waited on, never retried
    assert not (ssh_host.remote_dir / "runs" / "r2").exists()  # nothing was done there


def test_a_port_nobody_answers_is_not_ready_yet(ssh_host):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ep = _endpoint(ssh_host, ssh_host.known_hosts)
    ep = Endpoint(ep.host, port, ep.user, ep.key_file, ep.known_hosts)
    with pytest.raises(NotReadyError, match="127.0.0.1"):
        SshSession.connect(ep, "/tmp/never", timeout_s=2)
