"""`python -m runner.cli ARGS` is `budget ARGS`: how a detached run's controller is started
(`[sys.executable, '-m', 'runner.cli', 'drive', RUN_ID]`, runner/run/commands.py), and how tests run the CLI."""

from . import main

main()
