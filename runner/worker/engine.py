"""Batched generation with measurements: prefill/visual/decode tokens, latency, time to first token,
tokens/s and peak memory per device (torch's allocator peak per GPU on CUDA; process RSS sampled
every few ms on CPU). Batches are left-padded so greedy outputs equal those of samples run one by one.
An out-of-memory error (CUDA OOM, a CPU allocation failure, MemoryError) is turned into OutOfMemory
after the memory it held is released, so the caller can record it and carry on.

`compile` (job.engine.compile): generate with a static KV cache and a CompileConfig - transformers then
compiles the decode step (torch.compile, CUDA graphs: one launch a step instead of ~45 kernels a layer) on CUDA;
on CPU, and for bitsandbytes models (transformers marks them not compileable), it logs that the criteria are not
met and runs the static cache uncompiled. Each call's cache holds prompt + new tokens rounded up to a power of
two, so inputs of growing length recompile a few times, not every batch; transformers' own rule (keep the
largest size ever asked) is undone, or one 3072x3072 memory-sweep image would make every later step attend over
16k positions and hold their KV. Off by default: on only where a GPU measurement (benchmarks/engine_check.py)
showed it faster."""

from __future__ import annotations

import contextlib
import gc
import os
import resource
import threading
import time

import torch

from .generation import Batch, Interrupted, OutOfMemory, Output, Request

# --------------------------------------------------------------------------- memory

def _statm(field: int) -> int:
    """Bytes of /proc/self/statm's field: 0 the address space, 1 the resident set."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[field]) * os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    return _statm(1)


class _RssSampler:
    """Samples this process' RSS every few ms while armed. One thread for the process, started on
    first use, so that a memory cap in force later can never keep it from starting."""

    def __init__(self) -> None:
        self._armed = threading.Event()
        self._peak = 0
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while True:
            self._armed.wait()
            self._peak = max(self._peak, _rss())
            time.sleep(0.005)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
            self._thread.start()

    def arm(self) -> None:
        self.start()
        self._peak = _rss()
        self._armed.set()

    def disarm(self) -> int:
        self._armed.clear()
        return max(self._peak, _rss())


_SAMPLER = _RssSampler()


class Memory:
    """Peak memory over a region of code, per device (allocator peak per GPU; sampled RSS on CPU)."""

    def __init__(self, device: str):
        self.device = device
        self.gpus = list(range(torch.cuda.device_count())) if device == "cuda" else []
        self.seen: list = []  # the batches measured on this loaded model (batching.observe; sizes auto batches)

    def current(self) -> list[dict]:
        if self.gpus:
            return [{"device": f"cuda:{i}", "bytes": int(torch.cuda.memory_allocated(i))} for i in self.gpus]
        return [{"device": "cpu", "bytes": _rss()}]

    @contextlib.contextmanager
    def track(self, out: list):
        """Fill `out` with [{"device", "bytes"}] peaks of the region."""
        if self.gpus:
            for i in self.gpus:
                torch.cuda.reset_peak_memory_stats(i)
        else:
            _SAMPLER.arm()
        try:
            yield out
        finally:
            if self.gpus:
                # allocated: what the tensors needed; reserved: what the caching allocator held from the
                # card (what an OOM is measured against, with the CUDA context on top)
                out[:] = [{"device": f"cuda:{i}", "bytes": int(torch.cuda.max_memory_allocated(i)),
                           "reserved_bytes": int(torch.cuda.max_memory_reserved(i))} for i in self.gpus]
            else:
                out[:] = [{"device": "cpu", "bytes": _SAMPLER.disarm()}]

    def free_bytes(self) -> int:
        """Memory still available for batches: the smallest GPU's free memory plus what torch's caching
        allocator holds unused (a next batch reuses it; the card does not count it free); MemAvailable on CPU."""
        if self.gpus:
            return min(torch.cuda.mem_get_info(i)[0] + torch.cuda.memory_reserved(i) - torch.cuda.memory_allocated(i)
                       for i in self.gpus)
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        return 0

    @contextlib.contextmanager
    def cap(self, headroom_mib: int | None):
        """Simulate a smaller card: allow only `headroom_mib` more than is in use now. CUDA: the
        allocator's per-process fraction; CPU: the address-space limit (allocations beyond it fail
        for real, as on a full card)."""
        if not headroom_mib:
            yield
            return
        extra = headroom_mib << 20
        _SAMPLER.start()
        if self.gpus:
            for i in self.gpus:
                total = torch.cuda.get_device_properties(i).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_allocated(i) + extra) / total), i)
            try:
                yield
            finally:
                for i in self.gpus:
                    torch.cuda.set_per_process_memory_fraction(1.0, i)
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = _statm(0) + extra
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError | torch.OutOfMemoryError):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg
                                            or "cannot allocate memory" in msg)


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- generation

class _Clock:
    """A stopping criterion that timestamps the first generated token and obeys stop requests."""

    def __init__(self, should_stop):
        self.first: float | None = None
        self.should_stop = should_stop
        self.stopped = False

    def __call__(self, input_ids, scores, **kwargs):
        if self.first is None:
            if input_ids.is_cuda:  # the first token is computed when the GPU says so, not when it was queued
                torch.cuda.synchronize(input_ids.device)
            self.first = time.perf_counter()
        if self.should_stop():
            self.stopped = True
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


MIN_STATIC_CACHE = 256  # tokens: the smallest static cache (sizes are powers of two from here)


def static_cache_len(tokens: int) -> int:
    """The static KV cache length for `tokens` positions: the next power of two, at least MIN_STATIC_CACHE."""
    return max(MIN_STATIC_CACHE, 1 << max(0, tokens - 1).bit_length())


class Engine:
    def __init__(self, loaded, memory: Memory, generation: dict, image_limits: dict, seed: int, should_stop,
                 compile: bool = False):
        self.compile = compile
        self.model = loaded.model
        self.processor = loaded.processor
        self.memory = memory
        self.generation = generation
        self.image_limits = image_limits
        self.seed = seed
        self.should_stop = should_stop
        tok = self.processor.tokenizer
        cfg = self.model.config
        self.visual_ids = {getattr(cfg, "image_token_id", None), getattr(cfg, "video_token_id", None)} - {None}
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else []) | {tok.eos_token_id}
        self.pad_id = tok.pad_token_id

    def _inputs(self, requests: list[Request]):
        texts = [self.processor.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False)
                 for r in requests]
        kwargs = {"text": texts, "padding": True, "return_tensors": "pt"}
        images = [im for r in requests for im in r.images]
        if images:
            kwargs["images"] = images
            # the plan's pixel limits, whatever the checkpoint's processor ships with
            kwargs["images_kwargs"] = {"size": {"shortest_edge": self.image_limits["min_pixels"],
                                                "longest_edge": self.image_limits["max_pixels"]}}
        videos = [v for r in requests for v in r.videos]
        if videos:
            from transformers.video_utils import VideoMetadata

            kwargs["videos"] = videos
            kwargs["video_metadata"] = [VideoMetadata(**m) for r in requests for m in r.video_metadata]
            # frames are sampled by us at the plan's fps; per-frame pixels follow the processor's size
            # limits as they stand (transformers' default; its optional qwen-vl-utils cap is left off)
            kwargs["videos_kwargs"] = {"do_sample_frames": False}
            if hasattr(self.processor.video_processor, "cap_pixels_per_frame"):  # transformers >= 5.21
                kwargs["videos_kwargs"]["cap_pixels_per_frame"] = False
        return self.processor(**kwargs)

    def run(self, requests: list[Request], max_new_tokens: int) -> Batch:
        """Generate for a batch. Raises OutOfMemory (memory released) or Interrupted."""
        oom = ""
        peak: list = []
        try:
            with self.memory.track(peak):
                batch = self._run(requests, max_new_tokens)
        except Interrupted:
            raise
        except Exception as e:
            if not is_oom(e):
                raise
            oom = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
        if oom:
            release()  # outside the except block: the traceback no longer pins the batch's tensors
            raise OutOfMemory(oom)
        batch.peak_memory = peak
        return batch

    def _static(self, tokens: int) -> dict:
        """generate's arguments for the tuned path: a static cache and the compile settings."""
        from transformers import CompileConfig, GenerationConfig

        out = {"cache_implementation": "static", "compile_config": CompileConfig(fullgraph=False, mode="reduce-overhead")}
        if hasattr(GenerationConfig(), "max_cache_len"):  # transformers 5.17 and 5.24 have it; older ones size per call
            out["max_cache_len"] = static_cache_len(tokens)
        if "_previous_max_cache_length" in vars(self.model):  # the largest size asked before (see the docstring)
            del self.model._previous_max_cache_length
        return out

    def _run(self, requests, max_new_tokens) -> Batch:
        device = next(self.model.parameters()).device
        started = time.perf_counter()
        enc = self._inputs(requests).to(device)
        gen = dict(self.generation, max_new_tokens=max_new_tokens)
        if not gen.get("do_sample"):
            gen = {k: v for k, v in gen.items() if k not in ("top_p", "top_k", "temperature")}
        else:
            torch.manual_seed(self.seed)
        if self.compile:
            gen.update(self._static(enc["input_ids"].shape[1] + max_new_tokens))
        clock = _Clock(self.should_stop)
        with torch.inference_mode():
            out = self.model.generate(**enc, **gen, pad_token_id=self.pad_id, stopping_criteria=[clock])
        if device.type == "cuda":
            torch.cuda.synchronize()
        latency = time.perf_counter() - started
        if clock.stopped:
            raise Interrupted()
        prompt_len = enc["input_ids"].shape[1]
        outputs = []
        for i in range(len(requests)):
            generated = out[i, prompt_len:].tolist()
            n = next((j + 1 for j, t in enumerate(generated) if t in self.eos_ids), len(generated))
            ids = enc["input_ids"][i]
            mask = enc["attention_mask"][i].bool()
            outputs.append(Output(
                text=self.processor.tokenizer.decode(generated[:n], skip_special_tokens=True).strip(),
                prefill_tokens=int(mask.sum()),
                visual_tokens=int(sum(int((ids[mask] == v).sum()) for v in self.visual_ids)),
                decode_tokens=n))
        ttft = (clock.first or time.perf_counter()) - started
        return Batch(outputs=outputs, latency_s=latency, ttft_s=ttft, peak_memory=[])
