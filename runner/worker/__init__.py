"""The evaluation worker. It runs ON the GPU machine, shipped there as plain files, and depends only on
the stdlib, torch, torchvision, transformers, accelerate, bitsandbytes, pillow (and av for video) —
nothing from the controller. It talks to the controller only through files in its output directory:
`job.json` in; `status.json` (atomic heartbeat), `results/<task>.jsonl` (one line per sample),
`summary.json` and `worker.log` out. Run it as `python -m worker JOB OUT` from the directory that
holds this package (or `python -m runner.worker` inside the project)."""
