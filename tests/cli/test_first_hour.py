"""A new user's first hour (issue 9), as a contract: the cap printed is the cap enforced, pools are
explicit, bad input of every kind is one `error:` + one `hint:` line and exit 2 with nothing launched or
written, every hint names flags and commands that exist, and the small truths (JSON of every run,
ISO times, plain help) hold."""

from __future__ import annotations

import ast
import json
import os
import re
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "plans" / "smoke.yaml"


def spawn(home: Path, *args, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], input=stdin, capture_output=True,
                          text=True, cwd=REPO, env=dict(os.environ, BUDGET_HOME=str(home)), timeout=120)


def one_error(code: int, out: str, err: str, needle: str, exit_code: int = 2) -> None:
    lines = err.strip().splitlines()
    assert code == exit_code, err
    assert len(lines) == 2 and lines[0].startswith("error:") and lines[1].startswith("hint:"), err
    assert needle in lines[0], err
    assert "Traceback" not in err and "internal error" not in err


# --------------------------------------------------------------------------- 1. money: pools and caps


def test_pools_are_explicit_and_every_cap_change_is_an_event(cli, budget_home):
    code, out, err = cli("pool", "create", "team", "--yuan", "5", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["name"], doc["cap_cny"], doc["spent_cny"], doc["left_cny"]) == ("team", "5", "0", "5")
    code, out, _ = cli("pool", "set-cap", "team", "200", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["cap_cny"] == "200"
    assert [(e["kind"], e["old_cap_cny"], e["new_cap_cny"]) for e in doc["cap_history"]] == \
        [("created", None, "5"), ("cap", "5", "200")]
    code, out, _ = cli("pool", "list", "--json")
    assert code == 0 and [p["name"] for p in json.loads(out)["pools"]] == ["team"]
    code, out, _ = cli("pool", "show", "team")
    assert code == 0 and "cap 200.00 CNY" in out and "5.00 ->" in out
    rows = sqlite3.connect(budget_home / "ledger.db").execute("SELECT kind, new_cap_cny FROM pool_events").fetchall()
    assert rows == [("created", "5"), ("cap", "200")]


@pytest.mark.parametrize("args,needle", [
    (["pool", "create", "team", "--yuan", "0"], "positive"),
    (["pool", "create", "../up", "--yuan", "5"], "pool name '../up' is not allowed"),
    (["pool", "set-cap", "nope", "5"], "no pool 'nope'"),
    (["pool", "set-cap", "team", "x"], "AMOUNT 'x' is not a number"),
    (["pool", "set-cap", "team", "-1"], "No such option: -1"),
    (["pool", "create", "team2"], "Missing option '--yuan'"),
    (["run", str(SMOKE), "--yuan"], "Option '--yuan' requires an argument"),
    (["pool", "show", "nope"], "no pool 'nope'"),
])
def test_bad_pool_input(cli, args, needle):
    cli("pool", "create", "team", "--yuan", "5")
    one_error(*cli(*args), needle)


def test_creating_a_pool_twice_is_refused(cli):
    cli("pool", "create", "team", "--yuan", "5")
    one_error(*cli("pool", "create", "team", "--yuan", "9"), "pool 'team' exists already")


def test_run_above_its_pools_cap_is_refused_before_anything_is_written(cli, budget_home):
    """The user's trial: pool `default` capped at 5 by a first smoke run, then `--yuan 200`: it printed 200 and
    enforced 5. Now it says both figures and refuses; nothing launched, no run row, no run directory."""
    cli("pool", "create", "default", "--yuan", "5")
    code, out, err = cli("run", SMOKE, "--provider", "local", "--yuan", "200", "--yes")
    one_error(code, out, err, "--yuan 200 CNY is above the cap of pool 'default' (5.00 CNY, 0.00 CNY spent)")
    assert "budget pool set-cap default 200" in err and "--pool NAME" in err
    assert not (budget_home / "runs").exists()
    assert sqlite3.connect(budget_home / "ledger.db").execute("SELECT count(*) FROM runs").fetchone()[0] == 0


def test_the_printed_cap_is_the_recorded_cap_and_the_estimate_uses_the_billed_price(budget_home):
    """Declining the prompt launches nothing (exit 1, one clean line); the banner printed the run's cap and its
    pool's figures, and an estimate at the price the run would be billed (--price-yuan-hour)."""
    r = spawn(budget_home, "pool", "create", "team", "--yuan", "300")
    assert r.returncode == 0, r.stderr
    r = spawn(budget_home, "run", SMOKE, "--provider", "local", "--pool", "team", "--yuan", "200",
              "--price-yuan-hour", "200", stdin="n\n")
    assert r.returncode == 1, r.stderr
    assert "cap 200 CNY for this run (pool 'team': cap 300 CNY, 0.00 CNY spent, 300.00 CNY left)" in r.stderr
    assert "price 200.00 CNY/h" in r.stderr
    assert re.search(r"Launch and start spending\? \[y/N\]: ?\nerror: nothing launched", r.stderr), r.stderr
    assert "aborted" not in r.stderr and "Traceback" not in r.stderr
    assert not (budget_home / "runs").exists()


def test_estimate_is_priced_at_the_given_rate(budget_home):
    from planner.catalog import load_catalog
    from planner.money import billed_seconds, charge
    from planner.plans import load_plan, plan_file
    from runner.run import prepare

    ask = prepare.Ask(yuan=Decimal(500), price_yuan_h=Decimal(200))
    p = prepare.prepare(load_plan(SMOKE), plan_file(SMOKE), load_catalog(), budget_home,
                        prepare.provider("local", budget_home, ask), ask)
    rec = p.recommendation
    assert rec.price_cny_per_hour == Decimal(200) == Decimal(p.request.price_cny_h)
    billed = billed_seconds(rec.time.total_s, p.request.offer["billing_increment_s"],
                            p.request.offer["billing_minimum_s"])
    assert rec.cost_cny == charge(Decimal(200), billed)  # exact: rounded only where it is shown
    assert p.cap_cny == Decimal(500) and p.cap.new_pool


# --------------------------------------------------------------------------- 3. no internal errors


def test_budget_out_of_range_is_bad_input(cli):
    one_error(*cli("plan", "--yuan", "1e300"), "out of range")
    one_error(*cli("plan", "--yuan", "1" * 35), "out of range")


def test_eval_out_an_existing_file(cli, tmp_path):
    f = tmp_path / "taken"
    f.write_text("mine")
    one_error(*cli("eval", SMOKE, "--out", f), "is a file, not a directory")
    assert f.read_text() == "mine"


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["pool", "list"],
                                     ["run", str(SMOKE), "--provider", "local", "--yes"]])
@pytest.mark.parametrize("damage", ["garbage", "directory"])
def test_a_damaged_ledger_is_one_error_and_nothing_launches(cli, budget_home, command, damage):
    budget_home.mkdir(parents=True)
    ledger = budget_home / "ledger.db"
    if damage == "garbage":
        ledger.write_bytes(b"this is not a database at all\n" * 100)
    else:
        ledger.mkdir()  # unreadable as a file
    code, out, err = cli(*command)
    one_error(code, out, err, "the spend ledger cannot be opened")
    assert "cap" not in err and "estimate" not in out  # no launch banner before the refusal
    assert not (budget_home / "runs").exists()
    if damage == "garbage":
        assert ledger.read_bytes().startswith(b"this is not a database")  # left as it was, for the user


def test_aws_without_the_cloud_extra(cli, monkeypatch, budget_home):
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if not installed: import fails, find_spec is None
    code, out, err = cli("run", SMOKE, "--provider", "aws", "--yes")
    one_error(code, out, err, "--provider aws needs the cloud extra (boto3 is not installed)")
    assert 'pip install "gpubudget[cloud]"' in err and not (budget_home / "runs").exists()


def test_unknown_and_ambiguous_run_ids_are_bad_input(cli, budget_home):
    from runner.money.ledger import Ledger

    led = Ledger(budget_home / "ledger.db")
    led.ensure_pool("default", Decimal(5), 1.0)
    for rid in ("smoke-20261128-000000-aaaa", "smoke-20261128-000000-aaab"):
        led.create_run(id=rid, pool="default", plan="smoke", plan_path="p", provider="local", offer="o",
                       quantization="nf4", spot=0, cap_cny=Decimal(5), dir=str(budget_home / rid), created_at=1.0)
    led.close()
    one_error(*cli("status", "nope"), "no run 'nope'")
    one_error(*cli("stop", "smoke-2026"), "'smoke-2026' matches 2 runs")
    one_error(*cli("logs", "nope"), "no run 'nope'")
    one_error(*cli("resume", "nope"), "no run 'nope'")


@pytest.mark.parametrize("args,needle", [
    (["plan", "--model", ""], "unknown model ''"),
    (["plan", "--fx", "XYZ=3"], "no offer in the catalog is priced in XYZ"),
    (["plan", "--assume", "download_mb_s"], "no value (expected NAME=VALUE)"),
])
def test_silently_accepted_input_is_refused(cli, args, needle):
    one_error(*cli(*args), needle)


# --------------------------------------------------------------------------- 4. hints that tell the truth


def _cli_vocabulary():
    """Every option and every command path of `budget`."""
    from runner.cli import command

    flags, commands = set(), set()

    def walk(cmd, path):
        commands.add(" ".join(path))
        for p in getattr(cmd, "params", []):
            flags.update(o for o in p.opts + p.secondary_opts if o.startswith("--"))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])
    walk(command(), ["budget"])
    return flags | {"--help", "--debug"}, commands


def _messages() -> list[tuple[str, int, str]]:
    """The text (constant parts) of every error message and hint raised by the controller's code."""
    found = []
    for path in [*REPO.glob("planner/**/*.py"), *REPO.glob("runner/*.py"), *REPO.glob("runner/cloud/*.py"), *REPO.glob("runner/money/*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")).endswith(
                    ("Error", "TooSmall", "Failed")):
                for arg in node.args[:2]:
                    text = "".join(c.value for c in ast.walk(arg) if isinstance(c, ast.Constant)
                                   and isinstance(c.value, str))
                    found.append((str(path.relative_to(REPO)), node.lineno, text))
    return found


# Bad input per command: the static walk below knows every flag of every command, not which command a hint
# answers - `pool create ../x` hinted `--pool`, a flag of `budget run`. Each of these is run, and the flags its
# hint names (outside a `budget ...` command it quotes) must be its own command's.
BAD_INPUT = [
    ["pool", "create", "../x", "--yuan", "5"], ["pool", "create", "team", "--yuan", "0"], ["pool", "set-cap", "../x", "5"],
    ["pool", "show", "../x"], ["plan", "--yuan", "abc"], ["plan", "--yuan", "5", "--top", "1_0"],
    ["estimate", "--gpu", "T4", "--quant", "q9", "--prompt-tokens", "8", "--new-tokens", "8", "--model", "2b"],
    ["estimate", "--gpu", "T4", "--quant", "nf4", "--prompt-tokens", "0", "--new-tokens", "8", "--model", "2b"],
    ["report", "--format", "pdf"], ["report", "--by", "moon"], ["status", "../x"], ["logs", "../x"],
    ["run", "plans/smoke.yaml", "--yuan", "5", "--unattended", "--detach"], ["run", "nope.yaml"], ["eval", "nope.yaml"],
]


def _foreign_flags(args: list[str], hint: str) -> list[str]:
    """The flags `hint` names that the command `args` ran does not have (nor the root's --debug, --help)."""
    from runner.cli import command

    cmd = command()
    for word in args:
        sub = getattr(cmd, "commands", {}).get(word)
        if sub is None:
            break
        cmd = sub
    own = {o for p in cmd.params for o in p.opts + p.secondary_opts} | {"--help", "--debug"}
    hint = re.sub(r"`budget [^`]*`", "", hint)  # another command's flags, named with that command
    hint = re.sub(r"\((aws|ssh-keyscan|pip|sqlite3) [^)]*\)", "", hint)
    return [f for f in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", hint) if f not in own]


def test_every_hint_names_flags_and_commands_that_exist(cli):
    for args in BAD_INPUT:
        code, _, err = cli(*args)
        hint = err.strip().splitlines()[-1]
        assert code != 0 and hint.startswith("hint:"), (args, err)
        assert not _foreign_flags(args, hint), (args, hint)
    flags, commands = _cli_vocabulary()
    messages = _messages()
    assert len(messages) > 100  # the walk found the messages
    wrong = []
    for where, line, text in messages:
        ours = re.sub(r"\((aws|ssh-keyscan|pip|sqlite3) [^)]*\)", "", text)  # other tools' own flags
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", ours):
            if flag not in flags:
                wrong.append(f"{where}:{line}: {flag} in {text!r}")
        for seg in re.findall(r"`(budget [^`]*)`", text):
            path = ["budget"]
            for word in seg.split()[1:]:
                if " ".join([*path, word]) not in commands:
                    break
                path.append(word)
            if len(path) < 2 or (len(seg.split()) > len(path) and seg.split()[len(path)] in commands):
                wrong.append(f"{where}:{line}: `{seg}` in {text!r}")
    assert not wrong, "\n".join(wrong)


def test_an_aws_profile_that_does_not_exist_is_named(monkeypatch, budget_home):
    pytest.importorskip("boto3")
    from runner.cloud.aws import AwsProvider
    from runner.config import AwsConfig
    from runner.errors import AuthError

    monkeypatch.setenv("AWS_PROFILE", "nosuch")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(budget_home / "none"))
    with pytest.raises(AuthError) as e:
        AwsProvider(AwsConfig(region="us-east-1"), budget_home)
    assert "'nosuch'" in e.value.message and "None" not in e.value.message and "AWS_PROFILE" in e.value.message


def test_eval_of_a_missing_plan_hints_the_argument(cli):
    code, out, err = cli("eval", "nope.yaml")
    one_error(code, out, err, "no such plan file")
    assert "--plan PATH to" not in err and "their argument" in err


# --------------------------------------------------------------------------- 6. from plan to run


def test_plan_ends_with_the_command_that_runs_its_recommendation(cli):
    code, out, _ = cli("plan", "--yuan", "2000", "--json")
    doc = json.loads(out)
    rec, nxt = doc["recommendation"], doc["next"]
    offer = f"{rec['provider']}:{rec['instance_type']}@{rec['region']}"
    assert nxt["command"].startswith("budget run plans/qwen3-vl-8b.yaml --provider ")
    engine = "" if rec["engine"] == "hf" else f" --engine {rec['engine']}"  # the planner's engine, pinned
    assert f"--offer {offer} --quant {rec['quantization']}{engine} --yuan 2000" in nxt["command"]
    code, out, _ = cli("plan", "--yuan", "2000")
    assert code == 0 and "Run it: " + nxt["command"] in out
    code, out, _ = cli("plan", "--yuan", "2000", "--provider", "csdn", "--json")
    nxt = json.loads(out)["next"]
    assert "--provider ssh" in nxt["command"] and any("ssh: {host: HOST" in s for s in nxt["setup"])
    code, out, _ = cli("plan", "--yuan", "2000", "--provider", "aws", "--json")
    nxt = json.loads(out)["next"]
    assert "--provider aws" in nxt["command"] and any('pip install "gpubudget[cloud]"' in s for s in nxt["setup"])


def test_the_plans_command_is_accepted_by_budget_run(cli):
    """The printed command parses: every flag it uses exists on `budget run`."""
    code, out, _ = cli("plan", "--yuan", "2000", "--json")
    words = json.loads(out)["next"]["command"].split()
    flags, _ = _cli_vocabulary()
    assert words[:2] == ["budget", "run"] and all(w in flags for w in words if w.startswith("--"))


def test_prices_list_shows_the_offer_id(cli):
    code, out, _ = cli("prices", "list", "--gpu", "T4")
    assert code == 0 and "offer id" in out and "csdn:T4x1@cn" in out and "aws:g4dn.xlarge@us-east-1" in out


# --------------------------------------------------------------------------- 7. small truths


def test_status_json_lists_every_run_and_is_valid_with_none(cli, budget_home):
    code, out, err = cli("status", "--json")
    assert code == 0 and json.loads(out) == {"runs": []}, err
    from runner.money.ledger import Ledger

    led = Ledger(budget_home / "ledger.db")
    led.ensure_pool("default", Decimal(5), 1.0)
    for i in range(60):  # more than any page size
        led.create_run(id=f"r{i:03d}", pool="default", plan="smoke", plan_path="p", provider="local", offer="o",
                       quantization="nf4", spot=0, cap_cny=Decimal(5), dir="d", created_at=float(i))
    led.close()
    code, out, _ = cli("status", "--json")
    runs = json.loads(out)["runs"]
    assert code == 0 and len(runs) == 60 and runs[0]["id"] == "r059"


def test_a_second_import_of_a_provider_replaces_its_offers(cli, tmp_path):
    head = ("provider,instance_type,gpu,gpu_count,price_per,price,spot_price,currency,region,billing_increment_s,"
            "billing_minimum_s,source,date\n")
    a, b = tmp_path / "first.csv", tmp_path / "second.csv"
    a.write_text(head + "sim,cpu,T4,1,gpu,1,,CNY,local,1,0,first,2026-11-25\n")
    b.write_text(head + "sim,cpu,T4,1,gpu,2,,CNY,local,1,0,second,2026-11-26\n")
    for f in (a, b):
        code, _, err = cli("prices", "import", f, "--format", "csv")
        assert code == 0, err
    code, out, _ = cli("prices", "list", "--provider", "sim", "--json")
    offers = json.loads(out)["offers"]
    assert [(o["id"], o["price_cny_per_hour"]) for o in offers] == [("sim:cpu@local", "2.00")]


def test_model_inspect_names_the_model_from_its_config(cli, tmp_path):
    snap = tmp_path / "snapshots" / "0a1b2c3d"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text((REPO / "planner/data/models/Qwen3-VL-8B-Instruct.json").read_text())
    code, out, _ = cli("model", "inspect", snap, "--json")
    assert code == 0 and json.loads(out)["name"] == "Qwen3-VL (8.77 B params)"
    raw = json.loads((snap / "config.json").read_text())
    (snap / "config.json").write_text(json.dumps({**raw, "_name_or_path": "Qwen/Qwen3-VL-8B-Instruct"}))
    code, out, _ = cli("model", "inspect", snap, "--json")
    assert json.loads(out)["name"] == "Qwen3-VL-8B-Instruct"


def test_help_shows_plain_metavars_and_the_model_names():
    env = dict(os.environ, COLUMNS="120", TERM="dumb")
    for args in (["run"], ["plan"], ["eval"], ["pool", "set-cap"], ["prices", "list"], ["status"]):
        r = subprocess.run([sys.executable, "-m", "runner.cli", *args, "--help"], capture_output=True, text=True,
                           env=env, cwd=REPO, timeout=60)
        assert r.returncode == 0, r.stderr
        assert not re.search(r"<(str|bool|int|path|list\[str\])>", r.stdout), r.stdout
    r = subprocess.run([sys.executable, "-m", "runner.cli", "plan", "--help"], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=60)
    assert "--yuan" in r.stdout and "AMOUNT" in r.stdout and "2b, 4b, 8b, 32b" in r.stdout


def test_the_235b_rejected_table_fits_a_screen_and_all_lists_it(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    import importlib

    from runner import render
    importlib.reload(render)  # the console reads COLUMNS when made
    try:
        code, out, _ = cli("plan", "--yuan", "2000", "--model", "235b-a22b")
        rejected = out.split("Rejected")[1].split("candidates,")[0].splitlines()
        assert code == 0 and len(rejected) <= 40, "\n".join(rejected)
        tables = [ln for ln in out.splitlines() if not ln.startswith(("Run it:", "  "))]
        assert all(len(ln) <= 80 for ln in tables), max(tables, key=len)
        code, out, _ = cli("plan", "--yuan", "2000", "--model", "235b-a22b", "--all")
        assert code == 0 and out.count("A100-40GB x") >= 24  # every group, one row each
    finally:
        monkeypatch.delenv("COLUMNS")
        importlib.reload(render)


def test_plan_on_another_model_does_not_read_as_a_contradiction(cli):
    code, out, _ = cli("plan", "--yuan", "2000", "--model", "32b")
    assert code == 0 and "Plan qwen3-vl-8b: its tasks on Qwen3-VL-32B-Instruct" in out
    assert "evaluates the plan's model (Qwen3-VL-8B-Instruct)" in out


def test_readme_points_only_inside_the_repository():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "../shared" not in text and (REPO / "docs" / "DESIGN.md").is_file()
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        assert link.startswith("http") or (REPO / link).exists(), link


def test_a_plans_missing_data_is_listed_at_once(cli, budget_home, tmp_path, monkeypatch):
    """The shipped plan reads data only the user has: `budget run` names every missing file in one error before
    anything starts; `budget data init` copies the plan here and writes templates; then the files the templates
    name are listed; paths that leave the manifest's folder are refused."""
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("run", "plans/qwen3-vl-8b.yaml", "--provider", "local", "--yes")
    one_error(code, out, err, "4 data files of plan qwen3-vl-8b missing")
    for name in ("documents", "multiturn", "poetry", "videos"):
        assert f"data/{name}.jsonl (manifest of task" in err
    assert "`budget data init plans/qwen3-vl-8b.yaml`" in err and "qwen3-vl-8b-public.yaml" in err
    assert not (budget_home / "runs").exists()

    code, out, err = cli("data", "init", "plans/qwen3-vl-8b.yaml")
    assert code == 0, err
    assert (tmp_path / "qwen3-vl-8b.yaml").is_file() and "copied the shipped plan" in out
    rows = {n: [json.loads(x) for x in (tmp_path / "data" / f"{n}.jsonl").read_text().splitlines()]
            for n in ("documents", "multiturn", "poetry", "videos")}
    assert {"id", "image", "question", "answers"} <= set(rows["documents"][0])
    assert {"id", "image", "turns"} <= set(rows["multiturn"][0]) and {"keywords", "prompt"} <= set(rows["poetry"][0])
    assert {"video"} <= set(rows["videos"][0]) and {"frames", "fps"} <= set(rows["videos"][1])
    (tmp_path / "data" / "poetry.jsonl").write_text('{"id": "mine", "image": "paintings/mine.jpg"}\n')
    code, out, _ = cli("data", "init", "qwen3-vl-8b.yaml")
    assert code == 0 and "kept" in out and "mine" in (tmp_path / "data" / "poetry.jsonl").read_text()

    code, out, err = cli("eval", "qwen3-vl-8b.yaml")
    one_error(code, out, err, "6 data files of plan qwen3-vl-8b missing")
    assert "data/paintings/mine.jpg (image of task poetry)" in err and "clip-002/f1.jpg (frames" in err

    (tmp_path / "secret.jpg").write_bytes(b"not yours")
    (tmp_path / "data" / "poetry.jsonl").write_text('{"id": "x", "image": "../secret.jpg"}\n')
    code, out, err = cli("run", "qwen3-vl-8b.yaml", "--provider", "local", "--yes")
    one_error(code, out, err, "../secret.jpg: media paths must be relative to the manifest, inside its folder")
    assert not (budget_home / "runs").exists()


def test_a_job_the_worker_would_refuse_is_refused_before_anything_starts(cli, budget_home, tmp_path):
    plan = tmp_path / "wrong.yaml"
    plan.write_text("name: wrong\nmodel: tiny-random-qwen3-vl\nquantizations: [nf4]\n"
                    "tasks: [{name: caps, kind: caption, samples: 1, dataset: {kind: builtin, name: docvqa-val}}]\n")
    code, out, err = cli("run", plan, "--provider", "local", "--yuan", "5", "--yes")
    one_error(code, out, err, "'docvqa-val' is not a builtin caption dataset (known: coco-val2017-captions")
    assert not (budget_home / "runs").exists()
