"""How the controller gets into an AWS instance over SSH, the parts that need no AWS call: the login key
(the user's aws.ssh_key, or one gpubudget makes once under $BUDGET_HOME/keys), the address of this machine
that the instance's security group admits, and the instance's host key - pinned in the run directory the
first time its console shows one, and written to the run's known_hosts for each connection.

aws.py reads the console through the EC2 API and hands it here; nothing here imports boto3."""

from __future__ import annotations

import ipaddress
import urllib.request
from pathlib import Path

from ..errors import ConfigError
from .aws_requests import host_keys_from_console
from .base import HostKey


def make_key() -> HostKey:
    """A fresh ed25519 key pair in OpenSSH formats."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    k = Ed25519PrivateKey.generate()
    private = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                              serialization.NoEncryption()).decode()
    public = k.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return HostKey(private, public)


def login_key(ssh_key: Path | None, home: Path) -> tuple[Path, str]:
    """The private key file and public line used to log in (the user's, or one made for gpubudget)."""
    if ssh_key:
        key = Path(ssh_key).expanduser()
        pub = key.with_name(key.name + ".pub")
        if not key.is_file() or not pub.is_file():
            raise ConfigError(f"aws.ssh_key {key}: the key and {pub.name} must both exist",
                              "point aws.ssh_key at a private key with its .pub beside it, or drop it to let "
                              "gpubudget make one")
        return key, pub.read_text().strip()
    key = home / "keys" / "gpubudget_ed25519"
    pub = key.with_name(key.name + ".pub")
    if not key.exists():
        k = make_key()
        key.parent.mkdir(parents=True, exist_ok=True)
        key.touch(mode=0o600)
        key.write_text(k.private_openssh)
        pub.write_text(k.public_line + "\n")
    return key, pub.read_text().strip()


def client_cidr(configured: str | None) -> str:
    """The one address SSH is opened to: aws.client_cidr, or this machine's public IP as a /32."""
    if configured:
        return configured
    try:
        with urllib.request.urlopen("https://checkip.amazonaws.com", timeout=10) as r:
            ip = r.read(256).decode(errors="replace").strip()  # an address, never more
    except OSError as e:
        raise ConfigError(f"cannot find this machine's public IP ({e})",
                          "set aws.client_cidr (e.g. 203.0.113.7/32) in $BUDGET_HOME/config.yaml") from None
    try:
        return f"{ipaddress.IPv4Address(ip)}/32"
    except ValueError:
        raise ConfigError(f"checkip.amazonaws.com answered {ip[:40]!r}, not an IPv4 address",
                          "set aws.client_cidr (e.g. 203.0.113.7/32) in $BUDGET_HOME/config.yaml") from None


def pinned_host_key(run_dir: Path, provider_id: str) -> str | None:
    path = _pin(run_dir, provider_id)
    return path.read_text().strip() if path.exists() else None


def pin_host_key(run_dir: Path, provider_id: str, console: str) -> str | None:
    """Pin the first host key the console shows (None while it shows none: still booting)."""
    keys = host_keys_from_console(console)
    if not keys:
        return None
    _pin(run_dir, provider_id).write_text(keys[0] + "\n")
    return keys[0]


def _pin(run_dir: Path, provider_id: str) -> Path:
    return run_dir / f"host_key-{provider_id}.pub"  # each instance its own (a relaunch has a new one)


def known_hosts(run_dir: Path, host: str, port: int, host_key: str) -> Path:
    """The run's known_hosts, holding only the pinned key, for the address SSH will actually dial."""
    path = run_dir / "known_hosts"
    path.write_text(f"{host if port == 22 else f'[{host}]:{port}'} {host_key}\n")
    return path
