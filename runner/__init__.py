"""The controller side: CLI, rendering, and (later) providers, ledger, guard and orchestration."""
