"""Build the tiny random Qwen3-VL offline (FACTS.md recipe): a real Qwen3-VL architecture with 2-layer
text and vision stacks, widths >= 64 (bitsandbytes packs nothing narrower on avx512_bf16 CPUs), a
byte-level BPE tokenizer trained here with Qwen's special tokens, and Qwen's image/video processors
with small pixel limits. Its outputs are noise: it exists to test plumbing and accounting anywhere,
with no download. The build is deterministic (seeded) and atomic (built aside, then renamed)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

NAME = "tiny-random-qwen3-vl"
RECIPE_VERSION = 2  # 2: the chat template keeps Qwen's newlines

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
]

# Same numbers as planner/data/models/tiny-random-qwen3-vl.json (a test keeps them equal).
TEXT_CONFIG = {
    "vocab_size": 2048, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "attention_bias": False,
    "rope_scaling": {"rope_type": "default", "mrope_section": [4, 2, 2], "mrope_interleaved": True},
}
VISION_CONFIG = {
    "depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4, "patch_size": 16,
    "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 64, "num_position_embeddings": 64,
    "deepstack_visual_indexes": [0, 1],
}
MIN_PIXELS = 32 * 32 * 4
MAX_PIXELS = 32 * 32 * 256

# The structure of Qwen's chat template (roles, <|im_start|>/<|im_end|>, vision placeholders), newlines
# included: `transformers serve` finds the reply after "<|im_start|>assistant\n" (without the newline it
# answers with the prompt's text). No whitespace control: a `{%-` would eat the newline before it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "A red circle on a white background. A blue square next to a green triangle.",
    "Describe this image. What is written in the document? The total is 42 yuan.",
    "A cat sits on a wooden table near the window; a dog runs across the grass.",
    "请用一句古诗描述这幅画。明月松间照，清泉石上流。床前明月光，疑是地上霜。",
    "孤帆远影碧空尽，唯见长江天际流。山水 月亮 松树 河流 小船 春天 秋天 夜晚",
    "How many objects are there? What colour is the largest shape? Is it a photo?",
    "0123456789 invoice table formula receipt page line total date name amount",
]


def config_dict() -> dict:
    """The model's config.json content (token ids follow the tokenizer built below)."""
    ids = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    # deep copies: transformers edits nested config dicts (rope_scaling) in place
    return copy.deepcopy({
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "tie_word_embeddings": False,
        "text_config": dict(TEXT_CONFIG, bos_token_id=None, eos_token_id=ids["<|im_end|>"]),
        "vision_config": dict(VISION_CONFIG),
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    })


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TEXT_CONFIG["vocab_size"], special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIAL_TOKENS[1:])


def with_tiny_tokens(config: dict) -> dict:
    """A real Qwen3-VL config.json re-pointed at this tokenizer's special-token ids (the vocabulary
    size stays the real one), for random-weight models of a real architecture (benchmarks/gpu_check.py)."""
    cfg = copy.deepcopy(config)
    ids = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    cfg.update(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
               vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    cfg["text_config"] = dict(cfg["text_config"], bos_token_id=None, eos_token_id=ids["<|im_end|>"])
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def build(dest: Path, seed: int = 0, config: dict | None = None, dtype=None, device: str = "cpu",
          min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> Path:
    """Write a random-weight model (weights, config, tokenizer, processor) to `dest`; returns `dest`.
    Default: the tiny model. `config` (see with_tiny_tokens) builds a real architecture instead, in
    `dtype` on `device`."""
    import torch
    from transformers import (
        AutoConfig,
        Qwen2VLImageProcessor,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        torch.manual_seed(seed)
        cfg = AutoConfig.for_model(**(config or config_dict()))
        with torch.device(device):
            model = Qwen3VLForConditionalGeneration._from_config(cfg, dtype=dtype or torch.float32).eval()
        model.generation_config.eos_token_id = cfg.text_config.eos_token_id
        model.generation_config.pad_token_id = 0
        model.save_pretrained(work)
        del model
        tokenizer = _tokenizer()
        size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        processor = Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessor(size=size, patch_size=16, merge_size=2, temporal_patch_size=2,
                                                  image_mean=[0.5] * 3, image_std=[0.5] * 3),
            video_processor=Qwen3VLVideoProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels * 8},
                                                  patch_size=16, merge_size=2, temporal_patch_size=2),
            tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
        processor.save_pretrained(work)
        recipe = {"name": NAME if config is None else "random-weights", "recipe": RECIPE_VERSION, "seed": seed}
        (work / "gpubudget-recipe.json").write_text(json.dumps(recipe))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(work, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def ensure(dest: Path, seed: int = 0) -> Path:
    """Build the tiny model at `dest` unless a build of this recipe is already there."""
    marker = Path(dest) / "gpubudget-recipe.json"
    try:
        if json.loads(marker.read_text()) == {"name": NAME, "recipe": RECIPE_VERSION, "seed": seed}:
            return Path(dest)
    except (OSError, ValueError):
        pass
    return build(dest, seed)
