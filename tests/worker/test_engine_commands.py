"""The serving engines' command lines (runner/worker/engine_commands.py) against the pinned versions' CLI
references committed in fixtures/engine_cli/ (made by its extract.py: vLLM's and SGLang's argparse definitions
read from their wheels, transformers' click command read here). Neither vLLM nor SGLang installs on these
CPU machines, so their command lines are checked against those references only; `transformers serve` is also
run here with the built command and --help."""

from __future__ import annotations

import ast
import json
import sys

from pathlib import Path
from typing import NamedTuple

import pytest

from runner.worker import engine_commands as ec
from runner.worker.engine_commands import PINS, ServerParams, Unsupported

FIXTURES = Path(__file__).parent / "fixtures" / "engine_cli"
MODULES = {"vllm": "vllm.entrypoints.cli.main", "sglang": "sglang.launch_server",
           "transformers": "transformers.cli.transformers"}
SUBCOMMAND = {"vllm": "serve", "sglang": None, "transformers": "serve"}
SUPPORTED = {"vllm": ("bf16", "fp16", "fp32", "fp8"), "sglang": ("bf16", "fp16", "fp32", "fp8"),
             "transformers": ("bf16", "fp16", "fp32", "nf4", "int8")}
REFUSED = {"vllm": ("nf4", "int8"), "sglang": ("nf4", "int8"), "transformers": ("fp8",)}
INT = {"--port", "--max-model-len", "--tensor-parallel-size", "--seed", "--max-num-seqs", "--context-length",
       "--tp-size", "--random-seed", "--max-running-requests", "--default-seed"}
FLOAT = {"--gpu-memory-utilization", "--mem-fraction-static"}
JSON = {"--limit-mm-per-prompt", "--limit-mm-data-per-request"}
EVERYTHING = {"model": "Qwen/Qwen3-VL-8B-Instruct", "revision": "0123abcd", "max_model_len": 8192,
              "memory_fraction": 0.85, "max_images": 4, "max_videos": 1, "seed": 7, "concurrency": 32}
VARIANTS = {"defaults": {}, "everything": EVERYTHING, "tp2": dict(EVERYTHING, tensor_parallel=2),
            "cuda": {"device": "cuda"}}


class Option(NamedTuple):
    arity: str  # flag | value | values
    kind: str  # "", "choices" or "known"
    values: frozenset


def version(engine: str) -> str:
    return PINS[engine].split("==")[1]


def snapshot(engine: str) -> tuple[dict[str, Option], int]:
    """The pinned version's options by name, and how many positional arguments it takes."""
    options, positionals = {}, 0
    for line in (FIXTURES / f"{engine}-{version(engine)}.txt").read_text().splitlines():
        if line.startswith("#"):
            continue
        names, arity, *rest = line.split("\t")
        if names.startswith("<"):
            positionals += 1
            continue
        kind, values = rest[0].split(": ", 1) if rest else ("", "")
        for name in names.split(","):
            options[name] = Option(arity, kind, frozenset(values.split()))
    return options, positionals


def params(engine: str, quantization: str = "bf16", **kw) -> ServerParams:
    base = {"engine": engine, "model": "/models/Qwen3-VL-2B-Instruct", "served_name": "qwen3-vl-2b", "port": 8123,
            "quantization": quantization}
    return ServerParams(**{**base, **kw})


def cases():
    for engine, quants in SUPPORTED.items():
        for quant in quants:
            for variant, kw in VARIANTS.items():
                if engine == "transformers" and variant == "tp2":
                    continue
                yield pytest.param(engine, quant, kw, id=f"{engine}-{quant}-{variant}")


def parse(engine: str, argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Reads `argv` the way the pinned CLI would: its positional arguments and each option's values. Fails
    on an option the snapshot lacks, a flag given a value, or a value option given none."""
    options, positionals = snapshot(engine)
    head = [sys.executable, "-m", MODULES[engine]] + ([SUBCOMMAND[engine]] if SUBCOMMAND[engine] else [])
    assert argv[: len(head)] == head, argv
    rest, given, seen = argv[len(head):], [], {}
    while rest and not rest[0].startswith("-"):
        given.append(rest.pop(0))
    assert len(given) <= positionals, f"{engine} takes {positionals} positional argument(s): {given}"
    while rest:
        flag = rest.pop(0)
        assert flag in options, f"{flag} is not an option of {engine} {version(engine)}"
        assert flag not in seen, f"{flag} given twice"
        arity, values = options[flag].arity, []
        while arity != "flag" and rest and not rest[0].startswith("-") and (arity == "values" or not values):
            values.append(rest.pop(0))
        assert arity == "flag" or values, f"{flag} needs a value"
        seen[flag] = values
    return given, seen


# ----------------------------------------------------------------------------------------- every flag

@pytest.mark.parametrize("engine,quant,kw", list(cases()))
def test_every_flag_and_value_is_in_the_pinned_cli(engine, quant, kw):
    p = params(engine, quant, **kw)
    argv = ec.command(p, moe=kw is EVERYTHING)
    assert all(isinstance(a, str) and a for a in argv), argv
    positional, given = parse(engine, argv)
    options, _ = snapshot(engine)
    for flag, values in given.items():
        if options[flag].kind:  # an enumerated option: its value is one the engine names
            assert set(values) <= options[flag].values, (flag, values, sorted(options[flag].values))
        for v in values:
            if flag in INT:
                int(v)
            if flag in FLOAT:
                assert 0 < float(v) <= 1
            if flag in JSON:
                assert json.loads(v) == {"image": p.max_images, "video": p.max_videos}
    # what the params ask for reaches the command
    assert given["--port"] == [str(p.port)] and given["--host"] == ["127.0.0.1"]
    seed = {"vllm": "--seed", "sglang": "--random-seed", "transformers": "--default-seed"}[engine]
    assert given[seed] == [str(p.seed)]
    dtype = {"fp16": "float16", "fp32": "float32"}.get(quant, "bfloat16")
    assert given["--dtype"] == [dtype]
    if engine == "transformers":
        assert positional == [ec.request_model(p)]
        assert "--quantization" not in given if quant in ("bf16", "fp16", "fp32") else \
            given["--quantization"] == [{"nf4": "bnb-4bit", "int8": "bnb-8bit"}[quant]]
        assert given["--device"] == [p.device]
        return
    model = given["--model-path"] if engine == "sglang" else positional
    assert model == [p.model] and given["--served-model-name"] == [p.served_name]
    assert given.get("--quantization") == ({"vllm": ["fp8_per_tensor"], "sglang": ["fp8"]}[engine]
                                           if quant == "fp8" else None)
    names = {"vllm": ("--tensor-parallel-size", "--max-num-seqs", "--max-model-len", "--gpu-memory-utilization",
                      "--limit-mm-per-prompt"),
             "sglang": ("--tp-size", "--max-running-requests", "--context-length", "--mem-fraction-static",
                        "--limit-mm-data-per-request")}[engine]
    tp, seqs, max_len, memory, limits = names
    assert given[tp] == [str(p.tensor_parallel)] and int(given[seqs][0]) >= p.concurrency and limits in given
    assert given.get(max_len) == ([str(p.max_model_len)] if p.max_model_len else None)
    assert given.get(memory) == ([str(p.memory_fraction)] if p.memory_fraction else None)
    assert given.get("--revision") == ([p.revision] if p.revision else None)


def test_values_stay_single_arguments_without_a_shell():
    """A path with spaces and shell metacharacters is one argv element, never interpreted."""
    odd = "/models/my model; rm -rf ~ && $(echo x)|`y`"
    for engine in PINS:
        argv = ec.command(params(engine, model=odd, served_name="a b"))
        assert odd in argv and argv.count(odd) == 1
        assert engine == "transformers" or "a b" in argv


# ----------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("engine,quant,moe",
                         [(e, q, m) for e, qs in REFUSED.items() for q in qs for m in (False, True)])
def test_what_an_engine_cannot_run_is_refused_with_the_reason(engine, quant, moe):
    with pytest.raises(Unsupported) as err:
        ec.command(params(engine, quant), moe=moe)
    assert f"{engine}" in str(err.value) and version(engine) in str(err.value), err.value
    if engine == "vllm" and quant == "nf4":
        assert "removed" in str(err.value) and ("32012" in str(err.value)) == moe


def test_the_quantization_table_is_complete():
    for engine in PINS:
        assert sorted(SUPPORTED[engine] + REFUSED[engine]) == sorted(ec.QUANTIZATIONS)


def test_transformers_has_no_tensor_parallel_and_the_gpu_engines_no_cpu():
    with pytest.raises(Unsupported, match="transformers serve 5.24.0 has no tensor parallelism"):
        ec.command(params("transformers", tensor_parallel=2))
    for engine in ("vllm", "sglang"):
        with pytest.raises(Unsupported, match=f"{engine} .* CUDA build"):
            ec.command(params(engine, device="cpu"))
    assert ec.command(params("transformers", device="cpu"))[-4:-2] == ["--dtype", "bfloat16"]


@pytest.mark.parametrize("bad", [{"engine": "llamacpp"}, {"quantization": "int4"}, {"port": 0}, {"port": 70000},
                                 {"memory_fraction": 1.5}, {"tensor_parallel": 0}, {"concurrency": 0},
                                 {"max_images": -1}, {"max_model_len": 0}, {"served_name": ""},
                                 {"device": "tpu"}, {"engine": "transformers", "device": "tpu"}])
def test_bad_params_are_value_errors_not_refusals(bad):
    with pytest.raises(ValueError) as err:
        ec.command(params(**{"engine": "vllm", **bad}))
    assert not isinstance(err.value, Unsupported)


# ----------------------------------------------------------------------------------------- pins and the rest

def test_each_pin_has_its_snapshot_and_no_snapshot_is_stale():
    """Bumping a version in PINS without a new snapshot (extract.py) fails here, as does a leftover one."""
    assert {p.name for p in FIXTURES.glob("*.txt")} == {f"{e}-{version(e)}.txt" for e in PINS}
    for engine in PINS:
        header = (FIXTURES / f"{engine}-{version(engine)}.txt").read_text().splitlines()[:2]
        assert header[0].startswith(f"# {engine} {version(engine)}: the options `python -m {MODULES[engine]}")
        assert header[1].startswith("# source: ")
        assert PINS[engine].split("==")[0].split("[")[0] == engine


def test_install_command_and_health_path():
    for engine in PINS:
        assert ec.install_command(engine, "/venv/bin/python") == ["/venv/bin/python", "-m", "pip", "install",
                                                                  "--no-input", PINS[engine]]
        assert ec.health_path(engine) == "/health"
    for f in (ec.install_command, ec.health_path):
        with pytest.raises(ValueError):
            f("tgi")


def test_request_model_is_what_the_server_answers_to():
    assert ec.request_model(params("vllm", revision="r1")) == "qwen3-vl-2b"
    assert ec.request_model(params("sglang")) == "qwen3-vl-2b"
    assert ec.request_model(params("transformers")) == "/models/Qwen3-VL-2B-Instruct"
    assert ec.request_model(params("transformers", revision="r1")) == "/models/Qwen3-VL-2B-Instruct"  # a directory
    assert ec.request_model(params("transformers", model="Qwen/Qwen3-VL-2B-Instruct", revision="r1")) \
        == "Qwen/Qwen3-VL-2B-Instruct@r1"


def test_the_module_is_pure_stdlib():
    tree = ast.parse(Path(ec.__file__).read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert mods <= set(sys.stdlib_module_names) | {"__future__"}, mods
    assert ast.get_docstring(tree)
