"""Human output - the only package that uses rich: tables to stdout, warnings and errors to stderr, every
figure with its unit (amounts, instants and durations spelled by runner/units.py). One module per command
group (planning, evals, runs, reports, sweep, ledger, pools, data) over base.py's consoles and cells; the
commands call them through this package's names."""

from . import base
from .base import error, json_doc
from .data import data_init
from .evals import EvalProgress, compare_summary, eval_summary
from .ledger import ledger_check, ledger_rebuilt
from .planning import calibrated, calibration_show, estimate, imported, inspect, plan, prices
from .pools import pool_detail, pools_table
from .reports import report, wrote
from .runs import RunProgress, detached, log_line, run_detail, run_estimate, runs_table, stopped, unattended
from .sweep import swept

# made here, so that importlib.reload(runner.render) makes them again: a console reads COLUMNS when it is made
base.out, base.err = base.consoles()

__all__ = ["EvalProgress", "RunProgress", "calibrated", "calibration_show", "data_init", "detached", "error",
           "estimate", "eval_summary", "imported", "inspect", "json_doc", "ledger_check", "ledger_rebuilt",
           "log_line", "plan", "pool_detail", "pools_table", "prices", "report", "run_detail", "run_estimate",
           "runs_table", "stopped", "swept", "unattended", "wrote"]
