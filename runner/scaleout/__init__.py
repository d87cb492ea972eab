"""`budget run PLAN --provider ray`: a plan's evaluation as Ray tasks on a cluster - one shard of the job per task
(runner/worker/shards.py), one GPU each (one CPU on a cluster without GPUs) - each task an instance row of the
ledger, billed per second from its admission to its end, its lease extended by the controller every tick and
held on the cluster by a detached lease actor, so a dead controller's tasks stop by their lease.

Modules: lease.py (the lease and the result lines held on the cluster: pure, a clock injected), actor.py (the
detached named actor wrapping them), task.py (the task function run on a node: the worker in a subprocess),
cluster.py (the one module that talks to Ray from the controller), controller.py (the loop: admit, tick, lease,
pull, settle), lines.py (result lines from the cluster into the run directory through runner/inbound.py),
launch.py (`budget run --provider ray`: the run's price, cap, job and files), stopping.py (`budget stop` and
`budget status` of a ray run). `ray` is imported only inside functions of cluster.py, actor.py and task.py: the
gpubudget[ray] extra."""
