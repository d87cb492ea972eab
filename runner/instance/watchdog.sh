#!/bin/sh
# The instance's own budget guard. The controller keeps extending the lease (file `lease`: epoch
# seconds; see runner/money/guard.py); if the lease runs out - budget spent, or the controller gone - this
# asks the worker to stop (out/STOP: it flushes finished samples and exits), waits for it at most
# `grace` seconds (half the guard's teardown allowance, so billing still ends within it), then runs
# poweroff.sh (on EC2 `shutdown -h now`, which terminates the instance because
# it was launched with InstanceInitiatedShutdownBehavior=terminate). It never extends anything itself.
# A spot instance (file `notice_url`: the instance-metadata service) is also watched for the cloud's
# interruption notice (IMDSv2: a token, then spot/instance-action; about 2 minutes before the reclaim):
# on it the worker is asked to flush now (out/STOP) and `interrupted` says why, so the controller fetches
# every finished line and moves the run to a new instance before the cloud takes this one.
# Unattended (file `upload_urls`: "RELPATH PRESIGNED-PUT-URL" lines, no credential): the watchdog uploads
# the worker's output files every `upload_every` seconds, and when the worker has exited - or at the
# lease, after the grace - uploads them once more and powers the instance off.
cd "$(dirname "$0")"
GRACE=$(cat grace 2>/dev/null || echo 20)  # seconds the worker gets to flush (the controller sets it)
POLL=2
lease() { l=$(cat lease 2>/dev/null || echo 0); echo "${l%.*}"; }
# alive and still our worker (it works in this directory): a pid reused after a reboot is not
# (cloud/base.py OURS, restated: this script runs alone)
worker_alive() { p=$(cat worker.pid 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null &&
  { [ ! -d /proc/self ] || [ "$(readlink /proc/$p/cwd 2>/dev/null)" = "$(pwd -P)" ]; }; }
NOTICE=$(cat notice_url 2>/dev/null)
notice() {
  t=$(curl -sf --connect-timeout 1 -m 1 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$NOTICE/latest/api/token") &&
    curl -sf --connect-timeout 1 -m 1 -H "X-aws-ec2-metadata-token: $t" "$NOTICE/latest/meta-data/spot/instance-action"
}
upload() {  # every output file that exists, whole (PUT replaces the object)
  [ -f upload_urls ] || return 0
  while read -r rel url; do
    [ -f "out/$rel" ] && curl -sf --connect-timeout 5 -m 120 -T "out/$rel" "$url" > /dev/null ||
      { [ -f "out/$rel" ] && echo "watchdog: upload of $rel failed"; }
  done < upload_urls
  last_upload=$(date +%s)
}
last_upload=0
echo "watchdog: started $(date -u +%FT%TZ), lease $(lease), grace $GRACE s${NOTICE:+, spot notices from $NOTICE}"
while :; do
  now=$(date +%s)
  l=$(lease)
  if [ -f TERMINATED ]; then echo "watchdog: instance terminated by the controller"; exit 0; fi
  if [ -n "$NOTICE" ] && [ ! -f interrupted ] && n=$(notice 2>/dev/null); then
    echo "watchdog: interruption notice $n: stopping the worker"
    echo "$n" > interrupted
    mkdir -p out && touch out/STOP
  fi
  if [ "$now" -ge "$l" ]; then
    echo "watchdog: lease $l ran out (now $now): stopping the worker"
    echo "lease $l expired at $now" > watchdog.fired
    mkdir -p out && touch out/STOP
    while worker_alive && [ "$(date +%s)" -lt $((l + GRACE)) ]; do sleep 1; done
    upload
    echo "watchdog: powering off $(date -u +%FT%TZ)"
    sh ./poweroff.sh
    exit 0
  fi
  if [ -f upload_urls ]; then
    if [ -f worker.exit ] && ! worker_alive; then  # the plan is done (or the worker gave up): last upload, off
      upload
      echo "watchdog: worker exited $(cat worker.exit); uploaded; powering off $(date -u +%FT%TZ)"
      sh ./poweroff.sh
      exit 0
    fi
    [ "$now" -ge $((last_upload + $(cat upload_every 2>/dev/null || echo 60))) ] && upload
  fi
  sleep $POLL
done
