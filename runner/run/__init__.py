"""A run's life: its request (request.py), the pure state machine (machine.py), the one driver that
performs its effects and sleeps (driver.py, effects.py, instance.py), the one teardown (teardown.py), the
unattended hand-over (handover.py), the sample count (progress.py), and the commands that start, stop,
resume and describe runs (prepare.py, commands.py)."""
