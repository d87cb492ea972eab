"""VRAM model, per card.

Weights are priced the way bitsandbytes stores them (FACTS.md):
- fp16/bf16: 2 bytes per parameter.
- nf4: every `nn.Linear` weight at 4 bits + one absmax per 64-value block (fp32: 4.5 bits/param;
  with double quantization the absmax is 8-bit plus an fp32 per 256 blocks: ~4.127 bits/param).
- int8 (LLM.int8): 1 byte per weight + one fp32 scale per output row.
- What stays 16-bit: biases, embeddings, lm_head (transformers never quantizes the output
  embedding), norms, the Conv3d patch embedding and position table, MoE experts (fused 3-D
  parameters, not nn.Linear) and the router; the whole vision tower with `keep_vision_16bit`.

On top of the weights each card holds: its decoder layers' KV cache for the longest context x batch,
the activation peak (LLM prefill, or the vision encoder on the first card — they do not overlap), a
16-bit scratch copy of the largest quantized weight (bnb dequantizes per matmul), the CUDA
context, allocator slack; and the sum is raised to Qwen's "at least 1.2x the weights" when under it.
Layers do not split: a multi-card rig gets contiguous whole layers (accelerate's device_map), the
vision tower and embeddings on the first card, the final norm and lm_head on the last.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from .architecture import ParamGroup
from .assumptions import Assumptions
from .models import GpuMemory, MemoryEstimate, ModelSpec
from .workload import Pass, TaskLoad

MIB = 1024**2
NF4_BYTES = 0.5 + 4 / 64  # 4-bit codes + fp32 absmax per 64-block
NF4_DQ_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # absmax in 8 bits + fp32 per 256 blocks


@dataclass(frozen=True, slots=True)
class WeightLayout:
    """Bytes of weights by placement for one quantization."""

    vision: int
    embed: int
    layers: tuple[int, ...]
    final: int  # final norm + untied lm_head (they live on the last card)
    largest_quantized16: int  # 16-bit bytes of the largest quantized matrix (dequant scratch)

    @property
    def total(self) -> int:
        return self.vision + self.embed + sum(self.layers) + self.final


def group_bytes(g: ParamGroup, quant: str, quantize: bool, double_quant: bool) -> int:
    """Bytes of one parameter group; `quantize` is False for groups bnb is told to skip."""
    if not (g.linear and quantize and quant in ("nf4", "int8")):
        return 2 * g.params
    if quant == "nf4":
        w = g.numel * (NF4_DQ_BYTES if double_quant else NF4_BYTES)
    else:
        w = g.numel + 4 * g.out_features
    return int(round(w + 2 * g.bias)) * g.count


def bnb_quantizes(g: ParamGroup, quant: str, keep_vision_16bit: bool = False) -> bool:
    """Whether bitsandbytes stores `g` quantized: every `nn.Linear` but lm_head (an output embedding,
    `linear=False` in the inventory: transformers skips it, tied or not) and, with `keep_vision_16bit`,
    the vision tower (the worker's skip list). tests/worker/test_quantized_layout.py checks this
    against what transformers builds."""
    return g.linear and quant in ("nf4", "int8") and not (keep_vision_16bit and g.where == "vision")


def weight_layout(spec: ModelSpec, inv: list[ParamGroup], quant: str, keep_vision_16bit: bool = False,
                  double_quant: bool = True) -> WeightLayout:
    """Weights by placement for `quant` (see the module docstring for what stays 16-bit)."""
    vision = embed = final = largest = 0
    layers = [0] * spec.text.num_hidden_layers
    for g in inv:
        quantize = bnb_quantizes(g, quant, keep_vision_16bit)
        b = group_bytes(g, quant, quantize, double_quant)
        if quantize:
            largest = max(largest, 2 * g.numel)
        if g.where == "vision":
            vision += b
        elif g.where == "embed":
            embed += b
        elif g.where == "layer":
            layers[g.layer] += b
        else:
            final += b
    return WeightLayout(vision, embed, tuple(layers), final, largest)


@dataclass(frozen=True, slots=True)
class Peak:
    """The largest dynamic demands over a set of passes (each already x its batch)."""

    kv_tokens: int  # batch x (prompt + generated), for the KV cache
    prefill_tokens: int  # batch x prompt length, for activations
    prefill_len: int  # longest single prompt (attention mask / eager scores)
    batch: int
    vit_patches: int  # patches the vision tower holds at once
    vit_longest: int  # longest single image's patches (per-image attention)
    visual_tokens: int  # merged visual tokens (deepstack features kept for the LLM)


def peak_of(passes: list[tuple[Pass, int]]) -> Peak:
    """Peak over (pass, batch) pairs."""
    return Peak(
        kv_tokens=max(b * (p.prefill + p.new) for p, b in passes),
        prefill_tokens=max(b * p.prefill for p, b in passes),
        prefill_len=max(p.prefill for p, _ in passes),
        batch=max(b for _, b in passes),
        vit_patches=max(b * sum(p.vit_seqs) for p, b in passes),
        vit_longest=max(max(p.vit_seqs, default=0) for p, _ in passes),
        visual_tokens=max(b * p.visual for p, b in passes),
    )


def plan_peak(loads: list[TaskLoad], sixteen_bit: bool = False) -> Peak | None:
    """Peak of the plan's passes, the sweep excluded (its largest sizes are meant to probe the
    limit: the worker records an OOM there and goes on)."""
    passes = [(p, t.batch) for t in loads if t.sixteen_bit == sixteen_bit and t.kind != "memory_sweep"
              for p in t.passes]
    return peak_of(passes) if passes else None


@dataclass(frozen=True, slots=True)
class Dynamic:
    kv_per_layer: int
    llm_act: int
    vision_act: int


def dynamic(spec: ModelSpec, peak: Peak, a: Assumptions) -> Dynamic:
    t, v = spec.text, spec.vision
    kv_per_token_layer = 2 * t.num_key_value_heads * t.head_dim * 2
    inter = t.num_experts_per_tok * t.moe_intermediate_size if t.num_experts else t.intermediate_size
    llm = peak.prefill_tokens * (a.act_hidden_copies * t.hidden_size + a.act_mlp_copies * inter) * 2
    llm += peak.batch * t.vocab_size * 4 * 2  # last-token logits, upcast to fp32
    if a.attn_implementation == "eager":
        llm += 2 * peak.batch * t.num_attention_heads * peak.prefill_len**2 * 2
    else:
        llm += peak.batch * peak.prefill_len**2 * 2  # the 4-D padding mask transformers builds
    vit = 0
    if v is not None:
        vit = peak.vit_patches * (a.vit_hidden_copies * v.hidden_size + a.vit_mlp_copies * v.intermediate_size) * 2
        vit += (1 + len(v.deepstack_visual_indexes)) * peak.visual_tokens * v.out_hidden_size * 2
        if a.attn_implementation == "eager":
            vit += 2 * v.num_heads * peak.vit_longest**2 * 2
    return Dynamic(kv_per_token_layer * peak.kv_tokens, int(llm), int(vit))


class _Rig:
    """Card totals as plain integers (the layer search calls `total` thousands of times)."""

    def __init__(self, w: WeightLayout, d: Dynamic, n_cards: int, a: Assumptions, quantized: bool) -> None:
        self.w, self.d, self.n, self.a, self.quantized = w, d, n_cards, a, quantized
        self.prefix = [0]
        for b in w.layers:
            self.prefix.append(self.prefix[-1] + b)
        self.ctx = int(a.cuda_context_mib * MIB)
        self.total = self._totals()

    def parts(self, c: int, start: int, end: int) -> tuple[int, ...]:
        w, d, n_layers = self.w, self.d, end - start
        weights = self.prefix[end] - self.prefix[start]
        weights += (w.vision + w.embed if c == 0 else 0) + (w.final if c == self.n - 1 else 0)
        kv = d.kv_per_layer * n_layers
        act = d.llm_act if n_layers else 0
        vis = d.vision_act if c == 0 else 0
        scratch = w.largest_quantized16 if self.quantized and n_layers else 0
        scratch += int(self.a.memory_extra_mib * MIB)  # fitted by `budget calibrate` (0 by default)
        slack = int(self.a.allocator_slack * (kv + max(act, vis) + scratch))
        subtotal = weights + kv + max(act, vis) + scratch + self.ctx + slack
        floor = int(self.a.headroom * weights)
        return weights, kv, act, vis, scratch, slack, max(0, floor - subtotal), max(subtotal, floor)

    def _totals(self):
        """`total(card, start, end)`: the last of `parts`, the same integer arithmetic with the constants
        hoisted (tests/planner/test_split.py checks it against `parts`)."""
        prefix, w, d, a = self.prefix, self.w, self.d, self.a
        first, final, last = w.vision + w.embed, w.final, self.n - 1
        kv_layer, llm, vision = d.kv_per_layer, d.llm_act, d.vision_act
        scratch16 = w.largest_quantized16 if self.quantized else 0
        extra, ctx = int(a.memory_extra_mib * MIB), self.ctx
        slack, headroom = a.allocator_slack, a.headroom

        def total(c: int, start: int, end: int) -> int:
            n = end - start
            weights = prefix[end] - prefix[start]
            vis = 0
            if c == 0:
                weights += first
                vis = vision
            if c == last:
                weights += final
            # kv + max(act, vis) + scratch: act and the dequant scratch only on a card that holds layers
            dyn = kv_layer * n + max(llm, vis) + scratch16 + extra if n else max(0, vis) + extra
            subtotal = weights + dyn + ctx + int(slack * dyn)
            floor = int(headroom * weights)
            return subtotal if subtotal >= floor else floor
        return total


def split_layers(n_layers: int, n_cards: int, total, precision: int = MIB) -> list[tuple[int, int]]:
    """Contiguous whole layers per card minimising the largest card; `total(card, start, end)`
    -> bytes, non-decreasing as a card takes more layers (`end` up or `start` down). Binary search on
    a per-card cap with a greedy fill (accelerate's balanced map), to `precision` bytes.

    The result is the one the plain layer-by-layer greedy gives at every cap the search tries
    (tests/planner/test_split.py holds the two equal), at a fraction of the card totals: a fill finds each
    card's last layer by bisection (totals are monotone), between the last layers the fills at the nearest
    caps below and above found (a higher cap never ends a card earlier); and it remembers the range of caps
    over which everything it compared comes out the same, so that a later cap in that range costs nothing."""
    if n_cards == 1:
        return [(0, n_layers)]
    known: list[tuple[int, int | None, list[tuple[int, int]] | None]] = []  # (from cap, below cap, fill)
    caps: list[int] = []  # the caps filled so far, sorted, and the greedy's card ends at each
    ends: dict[int, list[int]] = {}
    empty = [total(c, 0, 0) for c in range(n_cards)]  # a card without layers: the same wherever it starts

    def fill(cap: int) -> list[tuple[int, int]] | None:
        for low, high, got in known:
            if low <= cap and (high is None or cap < high):
                return got
        at = bisect_left(caps, cap)
        below = ends[caps[at - 1]] if at else None  # bounds that hold for caps at or above that one
        above = ends[caps[at]] if at < len(caps) else None  # ... and at or below this one
        low = caps[at - 1] if at else -1  # the range over which this fill stays what it is
        high = caps[at] + 1 if above is not None else None

        def fits(c: int, s: int, e: int) -> bool:
            nonlocal low, high
            t = empty[c] if s == e else total(c, s, e)
            if t <= cap:
                low = max(low, t)
                return True
            high = t if high is None else min(high, t)
            return False

        out, start = [], 0
        for c in range(n_cards - 1):
            # the last end that fits (or start: none does), the first that does not
            ok = max(start, below[c]) if below else start
            bad = above[c] + 1 if above else n_layers + 1
            while bad - ok > 1:
                mid = (ok + bad) // 2
                if fits(c, start, mid):
                    ok = mid
                else:
                    bad = mid
            out.append((start, ok))
            start = ok
        out.append((start, n_layers))
        # every card fits, as the greedy checks them: a card given layers fits already (it was compared, or
        # the fill below put its end there at a lower cap); an empty card and the last card are compared here
        done = [fits(c, s, e) for c, (s, e) in enumerate(out) if s == e or c == n_cards - 1]
        got = out if all(done) else None
        known.append((low, high, got))
        caps.insert(at, cap)
        ends[cap] = [e for _, e in out[:-1]]
        return got

    hi = max(total(c, 0, n_layers) for c in range(n_cards))
    lo = max(max(empty), hi // n_cards) - 1  # no split beats an even share
    best = fill(hi)
    while hi - lo > precision:
        mid = (lo + hi) // 2
        got = fill(mid)
        if got is None:
            lo = mid
        else:
            hi, best = mid, got
    assert best is not None
    return best


Parts = tuple[tuple[int, int, int, int, int, int, int, int, int, int], ...]


def card_parts(spec: ModelSpec, w: WeightLayout, quant: str, peak: Peak, gpu_count: int, a: Assumptions) -> Parts:
    """Per card (layers, weights, kv, act, vision, scratch, ctx, slack, floor_adjust, total), split
    across `gpu_count` cards. Independent of the card's size, so callers can share it."""
    rig = _Rig(w, dynamic(spec, peak, a), gpu_count, a, quant in ("nf4", "int8"))
    layer = max(w.layers, default=0)
    splits = split_layers(spec.text.num_hidden_layers, gpu_count, rig.total, precision=max(MIB, layer // 16))
    out = []
    for c, (s, e) in enumerate(splits):
        weights, kv, act, vis, scratch, slack, floor_adjust, total = rig.parts(c, s, e)
        out.append((e - s, weights, kv, act, vis, scratch, rig.ctx, slack, floor_adjust, total))
    return tuple(out)


def from_parts(parts: Parts, quant: str, weights_total: int, usable_bytes: int) -> MemoryEstimate:
    """The estimate for cards of `usable_bytes` each, and whether it fits."""
    cards = [GpuMemory(gpu_index=c, layers=p[0], weights=p[1], kv_cache=p[2], activations=p[3],
                       vision_activations=p[4], dequant_scratch=p[5], cuda_context=p[6], allocator_slack=p[7],
                       floor_adjust=p[8], total=p[9], usable=usable_bytes) for c, p in enumerate(parts)]
    worst = max(cards, key=lambda g: g.total)
    fits = worst.total <= usable_bytes
    reason = ""
    if not fits:
        where = "per GPU" if len(cards) == 1 else f"on card {worst.gpu_index} of {len(cards)}"
        reason = f"needs {worst.total / 1024**3:.1f} GiB {where}"
    return MemoryEstimate(quantization=quant, gpu_count=len(cards), weights_total=weights_total, per_gpu=cards,
                          fits=fits, reason=reason)


def estimate(spec: ModelSpec, w: WeightLayout, quant: str, peak: Peak, gpu_count: int, usable_bytes: int,
             a: Assumptions) -> MemoryEstimate:
    """Per-card peak for `quant` on `gpu_count` cards of `usable_bytes` each, and whether it fits."""
    return from_parts(card_parts(spec, w, quant, peak, gpu_count, a), quant, w.total, usable_bytes)
