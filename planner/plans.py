"""Load `plans/*.yaml` into `EvalPlan`. Every error names the file and the field:
`plans/x.yaml:tasks.2.samples: Input should be greater than 0`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from .errors import PlanError
from .models import EvalPlan

DEFAULT_PLAN = "qwen3-vl-8b.yaml"


def bundled_plan(name: str = DEFAULT_PLAN) -> Path:
    """Path of a plan shipped inside the package (works from a non-editable install)."""
    return Path(str(resources.files("planner") / "data" / "plans" / name))


def parse_plan(text: str, label: str) -> EvalPlan:
    """Validate YAML text into an EvalPlan; `label` is the file name used in errors."""
    try:
        data = yaml.safe_load(text)
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
    """Where a plan argument points: the file itself, else the bundled plan of that name (so
    `plans/smoke.yaml` works from any directory), None: the bundled default. Relative dataset paths
    in a plan are relative to this file's directory."""
    p = bundled_plan() if path is None else Path(path)
    if not p.is_file() and path is not None and (bundled_plan(Path(path).name)).is_file():
        p = bundled_plan(Path(path).name)
    return p


def load_plan(path: str | Path | None) -> EvalPlan:
    """Load a plan file; None loads the bundled default (the seed's Qwen3-VL-8B evaluation)."""
    p = plan_file(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(f"{p}: no such plan file", "give the path of a YAML plan, e.g. plans/smoke.yaml "
                        "(`budget plan` takes it as --plan PATH, `budget run` and `budget eval` as their argument)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(f"{p}: cannot read ({e})", "pass a UTF-8 YAML plan file") from None
    return parse_plan(text, str(path) if path is not None else f"plans/{DEFAULT_PLAN}")
