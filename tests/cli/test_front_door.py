"""The front door (issue 22, finding 11, Build 7, and finding 10's input cases), as a new user meets it: a
plan path is read from that path or refused; plan files are size-capped and parsed with a depth limit;
numbers are ASCII digits within sane bounds; hints name commands that work on the install the user has
(the worker extra before anything is billed); `budget run` lists every missing prerequisite at once; the
tables keep ids and money whole at 80 columns; a path too long or a full disk is one clear error.

Every case runs `budget` in this process (the `cli` fixture) on real files."""

from __future__ import annotations

import errno
import importlib
import os
import re
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from tests.cli.test_first_hour import one_error

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "plans" / "smoke.yaml"


def no_ledger(home: Path) -> None:
    assert not (home / "ledger.db").exists() and not (home / "runs").exists()


# --------------------------------------------------------------------------- plan paths and plan files


def test_a_plan_path_in_a_folder_that_does_not_exist_is_refused(cli, tmp_path):
    one_error(*cli("plan", "--plan", tmp_path / "nowhere" / "smoke.yaml", "--yuan", "5"), "no such plan file")
    one_error(*cli("run", "/tmp/nowhere-gpubudget/smoke.yaml", "--yuan", "5", "--yes"), "no such plan file")


def test_a_bare_plan_name_still_finds_the_bundled_plan(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no plans/ here: the bundled plan of that name
    for arg in ("plans/smoke.yaml", "smoke.yaml"):
        code, _, err = cli("plan", "--plan", arg, "--yuan", "5", "--json")
        assert code == 0, err
    one_error(*cli("plan", "--plan", "elsewhere/smoke.yaml", "--yuan", "5"), "no such plan file")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_device_as_a_plan_is_refused_at_once(cli, device):
    one_error(*cli("plan", "--plan", device, "--yuan", "5"), "not a regular file")


@pytest.mark.timeout(20)
def test_a_fifo_as_a_plan_does_not_hang(cli, tmp_path):
    fifo = tmp_path / "plan.yaml"
    os.mkfifo(fifo)
    one_error(*cli("plan", "--plan", fifo, "--yuan", "5"), "not a regular file")


def test_a_plan_file_over_the_size_cap_is_refused(cli, tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text(SMOKE.read_text() + "#" * (2 * 1024 * 1024) + "\n")
    one_error(*cli("plan", "--plan", big, "--yuan", "5"), "larger than")


@pytest.mark.parametrize("text", ["[" * 5000, "[" * 5000 + "]" * 5000, "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 3000))])
def test_deeply_nested_yaml_is_one_plan_error(cli, tmp_path, text):
    deep = tmp_path / "deep.yaml"
    deep.write_text(text)
    one_error(*cli("plan", "--plan", deep, "--yuan", "5"), "deep.yaml")


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("args,needle", [
    (["plan", "--yuan", "１０"], "--yuan"),
    (["plan", "--yuan", "1_000"], "--yuan"),
    (["plan", "--yuan", "5", "--top", "1_0"], "--top"),
    (["run", str(SMOKE), "--yuan", "5", "--limit", "1_0", "--yes"], "--limit"),
    (["run", str(SMOKE), "--yuan", "5", "--batch-size", "２", "--yes"], "--batch-size"),
    (["estimate", "--gpu", "T4", "--quant", "nf4", "--prompt-tokens", "1_0", "--new-tokens", "8", "--model", "2b"],
     "--prompt-tokens"),
    (["estimate", "--gpu", "T4", "--quant", "nf4", "--prompt-tokens", "8", "--new-tokens", "8", "--model", "2b",
      "--image", "６４x６４"], "--image"),
    (["pool", "create", "team", "--yuan", "１"], "--yuan"),
    (["plan", "--yuan", "5", "--fx", "USD=7_2"], "--fx"),
    (["plan", "--yuan", "5", "--fx", "USD=７.2"], "--fx"),
    (["estimate", "--gpu", "T4", "--quant", "nf4", "--prompt-tokens", "8", "--new-tokens", "8", "--model", "2b",
      "--video", "３０@2"], "--video"),
])
def test_numbers_are_ascii_digits(cli, budget_home, args, needle):
    one_error(*cli(*args), needle)
    no_ledger(budget_home)


@pytest.mark.parametrize("line", ["samples: 1_000", "samples: ４", "samples: 0x10", "samples: 1:30",
                                  "prompt_tokens: ８"])
def test_plan_numbers_are_ascii_digits(cli, tmp_path, line):
    text = SMOKE.read_text().replace("samples: 4", line.replace("prompt_tokens", "samples: 4\n    prompt_tokens"), 1)
    if line.startswith("prompt_tokens"):
        text = text.replace("    prompt_tokens: 8\n", "", 1)
    plan = tmp_path / "p.yaml"
    plan.write_text(text)
    one_error(*cli("plan", "--plan", plan, "--yuan", "5"), "p.yaml:tasks.0.")


def test_a_budget_in_full_width_digits_in_a_plan_is_refused(cli, tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text(SMOKE.read_text().replace("budget_yuan: 5", "budget_yuan: ５"))
    one_error(*cli("plan", "--plan", plan), "p.yaml:budget_yuan")


@pytest.mark.parametrize("args,needle", [
    (["--prompt-tokens", "99999999999", "--new-tokens", "8"], "--prompt-tokens"),
    (["--prompt-tokens", "8", "--new-tokens", "99999999999"], "--new-tokens"),
    (["--prompt-tokens", "8", "--new-tokens", "8", "--batch", "1000000"], "--batch"),
    (["--prompt-tokens", "8", "--new-tokens", "8", "--gpus", "100000"], "--gpus"),
    (["--prompt-tokens", "600000", "--new-tokens", "600000"], "context"),
])
def test_absurd_counts_are_bad_input(cli, args, needle):
    one_error(*cli("estimate", "--gpu", "T4", "--quant", "nf4", "--model", "2b", *args), needle)


def test_absurd_token_counts_in_a_plan_are_refused(cli, tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text(SMOKE.read_text().replace("prompt_tokens: 8", "prompt_tokens: 99999999999", 1))
    one_error(*cli("plan", "--plan", plan, "--yuan", "5"), "p.yaml:tasks.0.prompt_tokens")


# --------------------------------------------------------------------------- spelling of flags and names


def test_gpu_cpu_is_spelled_either_way(cli):
    outs = []
    for name in ("cpu", "CPU", "Cpu"):
        code, out, err = cli("estimate", "--gpu", name, "--quant", "fp16", "--prompt-tokens", "8", "--new-tokens",
                             "8", "--model", "2b", "--json")
        assert code == 0, err
        outs.append(out)
    assert outs[0] == outs[1] == outs[2]


def test_debug_is_accepted_after_the_subcommand(cli):
    code, _, err = cli("plan", "--yuan", "5", "--debug", "--json")
    assert code == 0, err
    code, _, err = cli("pool", "list", "--debug")
    assert code == 0, err


def test_unattended_with_detach_is_refused_not_ignored(cli, budget_home):
    one_error(*cli("run", SMOKE, "--yuan", "5", "--unattended", "--detach", "--yes"), "--detach")
    no_ledger(budget_home)


# --------------------------------------------------------------------------- hints that work on this install


def test_pool_create_hints_only_its_own_flags(cli):
    """(test_every_hint_names_flags_and_commands_that_exist now runs bad input per command and checks each
    hint against the flags of the command that gave it.)"""
    code, out, err = cli("pool", "create", "../x", "--yuan", "5")
    one_error(code, out, err, "pool name '../x' is not allowed")
    assert "--pool" not in err and "`budget pool create team-eval --yuan 5`" in err


@pytest.fixture
def no_torch(monkeypatch):
    """The core install: `import torch` fails (find_spec says None)."""
    monkeypatch.setitem(sys.modules, "torch", None)


def test_run_on_this_machine_without_the_worker_extra_is_refused_before_anything_is_billed(cli, budget_home,
                                                                                          no_torch):
    one_error(*cli("run", SMOKE, "--yuan", "5", "--yes"), "worker extra")
    _, _, err = cli("run", SMOKE, "--yuan", "5", "--yes")
    assert 'pip install "gpubudget[worker]"' in err
    no_ledger(budget_home)


def test_eval_without_the_worker_extra_is_refused(cli, budget_home, no_torch, tmp_path):
    one_error(*cli("eval", SMOKE, "--out", tmp_path / "e"), "worker extra")
    assert not (tmp_path / "e").exists()


def test_report_on_an_empty_home_hints_a_command_that_works_here(cli, budget_home, no_torch):
    code, _, err = cli("report")
    assert code == 2 and "gpubudget[worker]" in err.splitlines()[-1], err
    (budget_home / "runs").mkdir(parents=True)  # a home with a ledger and no runs
    code, _, err = cli("report")
    assert code == 2 and "gpubudget[worker]" in err.splitlines()[-1], err


def test_report_on_an_empty_home_with_the_worker_extra_hints_the_smoke_run(cli, budget_home):
    pytest.importorskip("torch")
    code, _, err = cli("report")
    assert code == 2 and "`budget run plans/smoke.yaml --yuan 5`" in err, err


def test_run_lists_every_missing_prerequisite_at_once(cli, budget_home, monkeypatch, tmp_path):
    """An SSH run with the cloud extra missing, no host, key, known_hosts or offer configured and the plan's
    data missing: one error with the count and the list, every fix in the hint, nothing written."""
    monkeypatch.setitem(sys.modules, "paramiko", None)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh
    code, out, err = cli("run", REPO / "plans" / "qwen3-vl-8b.yaml", "--provider", "ssh", "--yuan", "5", "--yes")
    lines = err.strip().splitlines()
    one_error(code, out, err, "6 prerequisites")
    for needle in ("cloud extra", "ssh.host", "SSH key", "known_hosts", "--offer", "data file"):
        assert needle in lines[0], lines[0]
    assert 'pip install "gpubudget[cloud]"' in lines[1] and "budget data init" in lines[1]
    no_ledger(budget_home)


def test_one_missing_prerequisite_keeps_its_own_message(cli, budget_home, monkeypatch):
    monkeypatch.setitem(sys.modules, "paramiko", None)
    monkeypatch.setitem(sys.modules, "boto3", None)
    code, out, err = cli("run", SMOKE, "--provider", "aws", "--yuan", "5", "--yes")
    one_error(code, out, err, "--provider aws needs the cloud extra")
    no_ledger(budget_home)


# --------------------------------------------------------------------------- paths and disks


def test_a_path_too_long_is_one_clear_error(cli, budget_home, tmp_path):
    long = "a" * 5000
    for args in (["run", long, "--yuan", "5", "--yes"], ["plan", "--plan", long + ".yaml"],
                 ["report", "--out", tmp_path / long]):
        code, out, err = cli(*args)
        one_error(code, out, err, "too long")
        assert len(err) < 600, err
    (budget_home / "runs").mkdir(parents=True)
    code, out, err = cli("eval", SMOKE, "--out", tmp_path / long / "x")
    one_error(code, out, err, "too long")


def test_a_full_disk_is_one_error_naming_the_path(cli, budget_home, monkeypatch, tmp_path):
    """The lowest write meets ENOSPC (`budget prices import` writing the user catalog): one error naming the
    file, not an internal error."""
    src = tmp_path / "vms.csv"
    src.write_text("InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,"
                   "AvailabilityZone\ng4dn.xlarge,T4,1.0,4.0,16.0,,0.526,0.2,eu-west-1,eu-west-1a\n")

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
    monkeypatch.setattr(Path, "write_text", full)
    code, _, err = cli("prices", "import", src)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 2, err
    assert lines[0].startswith("error: no space left") and str(budget_home / "catalog") in lines[0], err
    assert "kept" in lines[0] and lines[1].startswith("hint:") and "internal error" not in err


# --------------------------------------------------------------------------- 80 columns


RUN_ID = "qwen3-vl-8b-public-20260101-120000-a1b2"


@pytest.fixture
def narrow(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    from runner import render

    importlib.reload(render)  # the console reads COLUMNS when made
    yield
    monkeypatch.setenv("COLUMNS", "200")
    importlib.reload(render)


def _a_run_that_spent(home: Path) -> None:
    from planner.models import Offer
    from runner.money.guard import Policy
    from runner.money.ledger import Ledger

    led = Ledger(home / "ledger.db")
    led.ensure_pool("team-vision-eval", Decimal("12345.67"), 1_800_000_000)
    led.create_run(id=RUN_ID, pool="team-vision-eval", plan="qwen3-vl-8b-public", plan_path="x.yaml",
                   provider="aws", offer="aws:g4dn.xlarge", quantization="nf4", spot=0, cap_cny=Decimal("2000.00"),
                   estimate_cny=Decimal("1234.5678"), dir="", created_at=1_800_000_000, state="running")
    o = Offer(provider="aws", instance_type="g4dn.xlarge", gpu="T4", gpu_count=1, price=Decimal("0.526"),
              currency="USD", region="us-east-1", billing_increment_s=1, billing_minimum_s=60)
    policy = Policy(tick_s=5, teardown_s=0, lease_s=10**7)
    _, iid = led.admit(RUN_ID, offer=o, price_cny_h=Decimal("3.7872"), price_original_h=Decimal("0.526"), spot=False,
                       provider="aws", now=1_800_000_000, policy=policy)
    led.set_instance(iid, state="running", launched_at=1_800_000_000)
    led.settle(iid, 1_800_000_000 + 7 * 3600 + 1234)
    led.update_run(RUN_ID, state="done", finished_at=1_800_000_000 + 7 * 3600 + 1300)
    led.close()


def _whole(out: str, *needles: str) -> None:
    assert all(len(line) <= 80 for line in out.splitlines()), out
    for needle in needles:
        assert any(needle in line for line in out.splitlines()), f"{needle!r} not whole in\n{out}"


def test_status_keeps_the_run_id_and_the_cap_whole_at_80_columns(cli, budget_home, narrow):
    _a_run_that_spent(budget_home)
    code, out, err = cli("status")
    assert code == 0, err
    _whole(out, RUN_ID, "2000.00", "27.81")


def test_pool_list_keeps_names_and_money_whole_at_80_columns(cli, budget_home, narrow):
    _a_run_that_spent(budget_home)
    code, out, err = cli("pool", "list")
    assert code == 0, err
    _whole(out, "team-vision-eval", "12345.67", "27.81", "12317.86")
    code, out, err = cli("pool", "show", "team-vision-eval")
    _whole(out.split("\n", 1)[1], RUN_ID, "2000.00")


def test_report_keeps_run_ids_and_amounts_whole_at_80_columns(cli, budget_home, narrow):
    _a_run_that_spent(budget_home)
    code, out, err = cli("report")
    assert code == 0, err
    _whole(out, RUN_ID, "27.81", "1234.57")


# --------------------------------------------------------------------------- money in refusals


def test_a_refusal_prints_money_by_the_display_rule(cli, budget_home):
    _a_run_that_spent(budget_home)
    code, out, err = cli("run", SMOKE, "--pool", "team-vision-eval", "--yuan", "20000", "--yes")
    one_error(code, out, err, "above the cap")
    assert not re.search(r"\d\.\d{5,}", err), err


def test_yaml_aliases_are_refused_not_expanded(cli, tmp_path):
    """A 500-byte plan of nested aliases expands to billions of list items (a bomb the size and depth caps do
    not see): refused as malformed YAML, at once."""
    lines = ["a0: &a0 [[64, 64]]"] + [f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]" for k in range(1, 10)]
    plan = tmp_path / "bomb.yaml"
    plan.write_text("\n".join(lines) + "\nname: bomb\n")
    code, out, err = cli("plan", "--plan", plan, "--yuan", "5")
    assert code == 2 and "aliases" in err and err.count("\n") == 2, err
