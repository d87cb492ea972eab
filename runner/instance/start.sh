#!/bin/sh
# start.sh PYTHON - start the worker in this run directory, detached from the SSH session that runs
# this (nohup + setsid: it survives the connection and the controller). Idempotent: a worker still
# running is left alone. The watchdog is started before (watchdog.sh), as soon as SSH is up.
set -eu
cd "$(dirname "$0")"
PY=$1
# alive and ours (works in this directory): a pid reused after a reboot is not our worker
# (cloud/base.py OURS, restated: this script runs alone)
alive() { p=$(cat "$1" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null &&
  { [ ! -d /proc/self ] || [ "$(readlink /proc/$p/cwd 2>/dev/null)" = "$(pwd -P)" ]; }; }
mkdir -p out
if alive worker.pid; then
  echo "start: worker already running (pid $(cat worker.pid))"
  exit 0
fi
rm -f out/STOP worker.exit
# the exit code lands in worker.exit: the controller tells a crash from a clean stop without a shell
PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false nohup setsid sh -c '"$0" -m worker job.json out; echo $? > worker.exit' \
  "$PY" >> out/worker.stderr.log 2>&1 < /dev/null &
echo $! > worker.pid
echo "start: worker pid $(cat worker.pid)"
