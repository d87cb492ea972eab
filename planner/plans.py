"""Load `plans/*.yaml` into `EvalPlan`. Every error names the file and the field:
`plans/x.yaml:tasks.2.samples: Input should be greater than 0`.

A plan file is untrusted input: read only from a regular file, at most MAX_BYTES (a device, a FIFO or a
huge file is refused before it is read), parsed as YAML nested at most MAX_DEPTH deep, with numbers in
ASCII digits only (planner/numbers.py: YAML 1.1 would read `1_000`, `0x10` and `1:30` as integers; here
they stay text, which the plan's number fields refuse)."""

from __future__ import annotations

import errno
import os
import re
import stat
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from .errors import PlanError, shown_path
from .models import EvalPlan

DEFAULT_PLAN = "qwen3-vl-8b.yaml"
MAX_BYTES = 1024 * 1024  # the seed's plan is 4 KB
MAX_DEPTH = 64           # the deepest real plan nests 4
_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _PlanLoader(yaml.SafeLoader):
    """SafeLoader with a nesting limit, no aliases (a few bytes of `*a` repeat whole lists: a bomb the size cap
    does not see) and numbers in ASCII digits only (no '_', hex, octal or base 60)."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a plan",
                                              self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_PlanLoader.yaml_implicit_resolvers = {k: [(t, r) for t, r in v if t not in (_INT, _FLOAT)]
                                       for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_PlanLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_PlanLoader.add_implicit_resolver(_FLOAT, re.compile(r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+(?=[eE]))"
                                                     r"(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
                                  list("-+0123456789."))
_PlanLoader.add_constructor(_INT, lambda loader, node: int(loader.construct_scalar(node)))  # 017 is 17, not octal


def bundled_plan(name: str = DEFAULT_PLAN) -> Path:
    """Path of a plan shipped inside the package (works from a non-editable install)."""
    return Path(str(resources.files("planner") / "data" / "plans" / name))


def parse_plan(text: str, label: str) -> EvalPlan:
    """Validate YAML text into an EvalPlan; `label` is the file name used in errors."""
    try:
        data = yaml.load(text, Loader=_PlanLoader)  # a SafeLoader
    except _TooDeep as e:
        raise PlanError(f"{label}:{e.line}: nested more than {MAX_DEPTH} levels deep",
                        "a plan nests a few levels (see plans/qwen3-vl-8b.yaml)") from None
    except RecursionError:  # a nesting limit below MAX_DEPTH (a small stack): the same refusal
        raise PlanError(f"{label}: nested too deep", "a plan nests a few levels (see plans/qwen3-vl-8b.yaml)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PlanError(f"{label}{where}: malformed YAML: {problem}", "check indentation and quoting") from None
    if not isinstance(data, dict):
        raise PlanError(f"{label}: a plan must be a YAML mapping (name, model, tasks, ...)",
                        "see plans/qwen3-vl-8b.yaml for a complete example")
    try:
        return EvalPlan.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(plan)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (typo?)"
        more = f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
        raise PlanError(f"{label}:{field}: {msg}{more}", "see plans/qwen3-vl-8b.yaml for the schema by example") from None


def plan_file(path: str | Path | None) -> Path:
    """Where a plan argument points. None: the bundled default. A path that exists: that path (whatever it
    is - load_plan refuses what is not a regular file). A path that does not exist: the bundled plan of
    that name only when the argument is a bare name or `plans/NAME` (so `plans/smoke.yaml` works from any
    directory, and the README's commands from a pip install); any other path is itself, and load_plan
    refuses it - `/tmp/nowhere/smoke.yaml` is never the bundled smoke plan. Relative dataset paths in a
    plan are relative to this file's directory."""
    if path is None:
        return bundled_plan()
    p = Path(path)
    try:
        if os.path.lexists(p):
            return p
    except (OSError, ValueError):  # a name too long, a NUL byte: load_plan says so
        return p
    if not p.is_absolute() and str(p.parent) in (".", "plans") and bundled_plan(p.name).is_file():
        return bundled_plan(p.name)
    return p


def read_plan_text(p: Path) -> str:
    """The text of plan file `p`: a regular file of at most MAX_BYTES in UTF-8, else PlanError. Opened
    without blocking (a FIFO is refused, not waited on) and read no further than the cap."""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise PlanError(f"{shown_path(p)}: no such plan file", "give the path of a YAML plan, e.g. plans/smoke.yaml "
                        "(`budget run` and `budget eval` take it as their argument, `budget plan --plan PATH` as an "
                        "option)") from None
    except (OSError, ValueError) as e:
        why = "path too long" if getattr(e, "errno", None) == errno.ENAMETOOLONG else \
            (getattr(e, "strerror", None) or str(e))
        raise PlanError(f"{shown_path(p)}: cannot read ({why})", "pass the path of a readable YAML plan file") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PlanError(f"{shown_path(p)}: not a regular file", "pass the path of a YAML plan file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise PlanError(f"{shown_path(p)}: cannot read ({e.strerror or e})", "pass a readable YAML plan file") from None
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise PlanError(f"{shown_path(p)}: larger than {MAX_BYTES // 1024} KiB, too large for a plan",
                        "a plan lists tasks; samples belong in data files it names (budget data init PLAN)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PlanError(f"{shown_path(p)}: not UTF-8 text", "pass a UTF-8 YAML plan file") from None


def load_plan(path: str | Path | None) -> EvalPlan:
    """Load a plan file; None loads the bundled default (the seed's Qwen3-VL-8B evaluation)."""
    text = read_plan_text(plan_file(path))
    return parse_plan(text, shown_path(Path(path)) if path is not None else f"plans/{DEFAULT_PLAN}")
