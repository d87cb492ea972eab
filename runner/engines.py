"""The controller's side of the engine choice: `--engine` and its flags checked once (one `error:` and one
`hint:` line each) and turned into the job's engine section. What each engine is lives in the worker
(runner/worker/serving.py, engine_commands.py) and the planner (planner/engines.py); this module only
accepts or refuses what a user asked for."""

from __future__ import annotations

import os

from planner.errors import InputError

from .worker.job import ENGINES, ENV_NAME, URL

STARTED = ("vllm", "sglang", "transformers")


def engine_of(kind: str, base_url: str | None = None, served_model: str | None = None,
              api_key_env: str | None = None, concurrency: int | None = None, *, here: bool) -> dict:
    """The job's engine section for `--engine KIND` and its flags. `here`: the worker runs on this machine
    (`budget eval`); a `server` endpoint (and its key) is for work done from here only, never an instance."""
    kind = (kind or "hf").lower()
    if kind not in ENGINES:
        raise InputError(f"--engine {kind!r} is not one of {', '.join(ENGINES)}",
                         "e.g. --engine hf, or --engine server --base-url http://127.0.0.1:8000/v1")
    server_flags = [f for f, v in (("--base-url", base_url), ("--served-model", served_model),
                                   ("--api-key-env", api_key_env)) if v]
    if kind != "server" and server_flags:
        raise InputError(f"{server_flags[0]} is for --engine server (this is --engine {kind})",
                         "add --engine server, or leave the flag out")
    if kind == "hf" and concurrency:
        raise InputError("--concurrency is for server engines (hf batches with --batch-size)",
                         "use --batch-size N with --engine hf")
    out: dict = {"kind": kind}
    if concurrency:
        out["concurrency"] = concurrency
    if kind != "server":
        return out
    if not here:
        raise InputError("--engine server is for work from this machine (budget eval): an endpoint and its key "
                         "never go to an instance", "use --engine vllm, sglang or transformers for budget run")
    if not base_url or not URL.fullmatch(base_url):
        raise InputError(f"--engine server needs --base-url with an http(s) URL, got {base_url!r}",
                         "e.g. --base-url http://127.0.0.1:8000/v1")
    out["base_url"] = base_url.rstrip("/")
    if served_model:
        out["served_model"] = served_model
    if api_key_env:
        if not ENV_NAME.fullmatch(api_key_env):
            raise InputError(f"--api-key-env {api_key_env!r} is not an environment variable name",
                             "name the variable, e.g. --api-key-env OPENAI_API_KEY (never the key itself)")
        if not os.environ.get(api_key_env):
            raise InputError(f"--api-key-env {api_key_env}: that variable is not set here",
                             f"export {api_key_env}=... first (the key is read from it, never written)")
        out["api_key_env"] = api_key_env
    return out
