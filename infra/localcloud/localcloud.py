"""The local test cloud: moto server on loopback for the AWS APIs, and OpenSSH sshd on loopback as
each EC2 instance gpubudget launches there. The tests use it through tests/runner/conftest.py; a
human runs it to try `budget run --provider aws` with no AWS account:

    python infra/localcloud/localcloud.py --dir /tmp/localcloud      # prints what to export

What it plays:
- cloud-init: for each running instance tagged gpubudget:managed it reads the instance's user-data from
  the EC2 API, generates the instance's own ed25519 host key (as cloud-init does at first boot; a
  user-data that carries a host *private* key is an error), prints its public half to the instance's
  console in cloud-init's `-----BEGIN SSH HOST KEY KEYS-----` block (served by moto's
  GetConsoleOutput), and starts sshd with it and the authorized key from user-data
  (`ssh_authorized_keys`), on the one loopback port the controller reaches through
  BUDGET_SSH_ADDRESS=127.0.0.1:PORT. The controller pins the key it reads from the console - the same
  path as on EC2, with no bypass.
- the OS shutdown: the instance's power-off command in this cloud is `touch POWEROFF` (config
  aws.poweroff); when a run directory shows that file, the agent does what EC2 does on an OS shutdown:
  terminate the instance if its InstanceInitiatedShutdownBehavior is terminate, else stop it.
- terminate: when EC2 says the instance is shutting down or gone, its sshd is stopped.
Needs: `apt-get install -y openssh-server`, `pip install "moto[server]"`."""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import yaml

DLAMI_NAME = "Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.7 (Ubuntu 22.04) 20261101"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sshd_binary() -> str | None:
    return shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.path.exists(p)),
                                        None)


class Sshd:
    """One sshd on 127.0.0.1:port with the given host key and authorized keys, as a child process."""

    def __init__(self, workdir: Path, port: int, host_key_private: str, authorized: list[str]):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        key = self.dir / "ssh_host_ed25519_key"
        key.write_text(host_key_private if host_key_private.endswith("\n") else host_key_private + "\n")
        key.chmod(0o600)
        (self.dir / "authorized_keys").write_text("\n".join(authorized) + "\n")
        cfg = self.dir / "sshd_config"
        cfg.write_text("\n".join([
            f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {key}", f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}", "UsePAM no", "StrictModes no",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp", "LogLevel ERROR", "MaxStartups 50",
            # the machine's own settings, as an image would set them: the tests' thread count (OpenMP spin-waits
            # make a busy 2-core machine many times slower with two threads per worker)
            *([f"SetEnv OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"] if os.environ.get("OMP_NUM_THREADS") else []),
        ]) + "\n")
        try:
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
        binary = sshd_binary()
        if binary is None:
            raise RuntimeError("sshd not found: apt-get install -y openssh-server")
        self.log = open(self.dir / "sshd.log", "ab")
        self.proc = subprocess.Popen([binary, "-f", str(cfg), "-D", "-e"], stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.dir / 'sshd.log').read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not listen on {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def caption_plan(smoke: Path, directory: Path, name: str, samples: int) -> Path:
    """A workload for the test cloud: the smoke plan's settings (tiny model) with one synthetic caption
    task of `samples` 64x64 images at batch 1 - a run whose length the caller chooses."""
    head = smoke.read_text().split("tasks:")[0].replace("name: smoke", f"name: {name}")
    path = Path(directory) / f"{name}.yaml"
    path.write_text(head.replace("batch_size: 2", "batch_size: 1") + f"""tasks:
  - name: captions
    kind: caption
    samples: {samples}
    image_size: [64, 64]
    prompt_tokens: 8
    dataset: {{kind: synthetic}}
    metrics: [bleu4]
""")
    return path


def register_dlami(ec2) -> str:
    """An image named like the Deep Learning AMI (owned by the test account, so `ami_owners: [self]`)."""
    return ec2.register_image(Name=DLAMI_NAME, RootDeviceName="/dev/sda1", Architecture="x86_64",
                              BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 100}}])["ImageId"]


CONSOLE: dict[str, str] = {}  # instance id -> its console output, as cloud-init printed it


def play_console() -> None:
    """moto's GetConsoleOutput returns one canned text; serve what our cloud-init printed instead (moto
    runs in this process: ThreadedMotoServer)."""
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.ec2.responses.general import General
    from moto.ec2.utils import Base64EncodedString

    if getattr(General, "_localcloud", False):
        return
    original = General.get_console_output

    def get_console_output(self):
        iid = self._get_param("InstanceId")
        if iid not in CONSOLE:
            return original(self)
        return ActionResult({"InstanceId": iid, "Timestamp": utcnow(),
                             "Output": Base64EncodedString.from_raw_string(CONSOLE[iid])})

    General.get_console_output = get_console_output
    General._localcloud = True


def host_key() -> tuple[str, str]:
    """A fresh ed25519 host key: (OpenSSH private key, public line) - what cloud-init generates at boot."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    k = Ed25519PrivateKey.generate()
    private = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                              serialization.NoEncryption()).decode()
    public = k.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return private, public


class CloudInitAgent(threading.Thread):
    """Plays cloud-init and the OS shutdown for moto's instances (see the module docstring)."""

    def __init__(self, ec2, ssh_port: int, workdir: Path, remote_dir: Path, boot_delay_s: float = 0.0):
        super().__init__(daemon=True, name="cloud-init-agent")
        self.ec2, self.port, self.dir, self.remote_dir = ec2, ssh_port, Path(workdir), Path(remote_dir)
        self.boot_delay_s = boot_delay_s
        self.sshd: dict[str, Sshd] = {}
        self.seen: dict[str, float] = {}
        self.shutdowns: list[tuple[str, str]] = []  # (instance id, what EC2 did) for each OS power-off
        self.volume_tags: dict[str, list[dict]] = {}  # instance id -> its volumes' tags, seen at boot
        self.ingress: dict[str, list[dict]] = {}      # instance id -> its security groups' ingress rules
        self.impostor_key: str | None = None  # tests: serve this host key instead of the one on the console
        self.host_keys: dict[str, str] = {}  # instance id -> the public line of the host key it generated
        self._private: dict[str, str] = {}
        play_console()
        self.start_sshd = True   # tests flip this to play an instance whose sshd never comes up
        # tests set this to play what a terminate really does to a machine: every process of the instance dies
        # and its disk is gone (kept aside in .gone/ for the test to look at), so a relaunch starts empty
        self.disks_die = False
        self.gone: set[str] = set()
        self._halt = threading.Event()
        self.errors: list[str] = []

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        for s in self.sshd.values():
            s.stop()
        self.sshd.clear()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self._step()
            except Exception as e:  # noqa: BLE001 - keep playing; the test reads .errors
                self.errors.append(f"{e.__class__.__name__}: {e}")
            self._halt.wait(0.2)

    def _instances(self) -> list[dict]:
        res = self.ec2.describe_instances(Filters=[{"Name": "tag:gpubudget:managed", "Values": ["true"]}])
        return [i for r in res["Reservations"] for i in r["Instances"]]

    def _step(self) -> None:
        # the dead first: a relaunched run's new instance must never boot onto the disk of the one it replaces
        for inst in sorted(self._instances(), key=lambda i: i["State"]["Name"] in ("pending", "running")):
            iid, state = inst["InstanceId"], inst["State"]["Name"]
            if state in ("shutting-down", "terminated", "stopping", "stopped"):
                if iid in self.sshd:
                    s = self.sshd.pop(iid)
                    if self.disks_die:  # the machine is gone: its open connections die with it
                        subprocess.run(["pkill", "-KILL", "-P", str(s.proc.pid)], check=False)
                    s.stop()
                if self.disks_die and state in ("shutting-down", "terminated") and iid not in self.gone:
                    self._disk_gone(iid, inst)
                continue
            self.seen.setdefault(iid, time.monotonic())
            if iid in self.sshd and self.sshd[iid].proc.poll() is not None:
                self.sshd.pop(iid).stop()  # sshd died (tests kill it to drop connections): systemd restarts it
            if state == "running" and iid not in self.sshd and self.start_sshd \
                    and time.monotonic() - self.seen[iid] >= self.boot_delay_s:
                self._boot(inst)
            run = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}.get("gpubudget:run")
            if run and (self.remote_dir / "runs" / run / "POWEROFF").exists():
                self._power_off(iid)

    def _boot(self, inst: dict) -> None:
        iid = inst["InstanceId"]
        raw = self.ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"].get("Value", "")
        text = base64.b64decode(raw).decode() if raw else ""
        doc = yaml.safe_load(text) or {}
        if "PRIVATE KEY" in text or doc.get("ssh_keys"):
            self.errors.append(f"{iid}: user-data carries a host private key (anyone who may read it could "
                               "impersonate the instance)")
            return
        if iid not in self._private:  # cloud-init makes it once, at first boot; a restarted sshd keeps it
            self._private[iid], self.host_keys[iid] = host_key()
        private, public = self._private[iid], self.host_keys[iid]
        CONSOLE[iid] = ("[   12.345678] cloud-init[1234]: Generating public/private ed25519 key pair.\n"
                        "-----BEGIN SSH HOST KEY FINGERPRINTS-----\n256 SHA256:(localcloud) root@localcloud (ED25519)\n"
                        "-----END SSH HOST KEY FINGERPRINTS-----\n"
                        f"-----BEGIN SSH HOST KEY KEYS-----\n{public} root@localcloud\n-----END SSH HOST KEY KEYS-----\n")
        vols = self.ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [iid]}])["Volumes"]
        self.volume_tags[iid] = [{t["Key"]: t["Value"] for t in v.get("Tags", [])} for v in vols]
        groups = [g["GroupId"] for g in inst.get("SecurityGroups", [])]
        self.ingress[iid] = [p for g in self.ec2.describe_security_groups(GroupIds=groups)["SecurityGroups"]
                             for p in g["IpPermissions"]] if groups else []
        for other in list(self.sshd):  # one loopback port: a new instance replaces an old one's sshd
            self.sshd.pop(other).stop()
        s = Sshd(self.dir / iid, self.port, self.impostor_key or private, doc.get("ssh_authorized_keys") or [])
        s.wait_ready()
        self.sshd[iid] = s

    def _disk_gone(self, iid: str, inst: dict) -> None:
        self.gone.add(iid)
        run = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}.get("gpubudget:run")
        if not run:
            return
        root = (self.remote_dir / "runs" / run).resolve()
        for proc in Path("/proc").iterdir():  # the instance's processes: those working in its directory
            try:
                cwd = Path(os.readlink(proc / "cwd"))
            except OSError:
                continue
            if proc.name.isdigit() and (cwd == root or root in cwd.parents):
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                except OSError:
                    pass
        if root.exists():
            aside = self.remote_dir / ".gone" / iid
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(root), str(aside))

    def _power_off(self, iid: str) -> None:
        behaviour = self.ec2.describe_instance_attribute(
            InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior")["InstanceInitiatedShutdownBehavior"]["Value"]
        if behaviour == "terminate":
            self.ec2.terminate_instances(InstanceIds=[iid])
        else:
            self.ec2.stop_instances(InstanceIds=[iid])
        self.shutdowns.append((iid, behaviour))
        if iid in self.sshd:
            self.sshd.pop(iid).stop()


def main() -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path(tempfile.mkdtemp(prefix="localcloud-")))
    ap.add_argument("--aws-port", type=int, default=5000)
    ap.add_argument("--ssh-port", type=int, default=2222)
    a = ap.parse_args()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=a.aws_port)
    server.start()
    endpoint = f"http://127.0.0.1:{a.aws_port}"
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    register_dlami(ec2)
    remote = a.dir / "instance"
    remote.mkdir(parents=True, exist_ok=True)
    agent = CloudInitAgent(ec2, a.ssh_port, a.dir / "sshd", remote)
    agent.start()
    print(f"""export AWS_ENDPOINT_URL={endpoint} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \\
       AWS_DEFAULT_REGION=us-east-1 BUDGET_SSH_ADDRESS=127.0.0.1:{a.ssh_port}
# and in $BUDGET_HOME/config.yaml:
aws: {{ami_owners: [self], client_cidr: 127.0.0.1/32, user: {os.environ.get('USER') or 'root'}, remote_dir: {remote},
      poweroff: touch POWEROFF, python: {shutil.which('python3')}}}
# Ctrl-C stops the cloud.""", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        agent.stop()
        server.stop()


if __name__ == "__main__":
    main()
