"""Samples drawn here rather than fetched: deterministic images (coloured shapes, a tiny invoice, a night
scene, noise for the memory sweep, a receipt or table of numbers to read - digit_images.py) with what a
correct answer would mention, and the frames of a moving square for video - so a plan can run with no
dataset at all."""

from __future__ import annotations

import random

from . import digit_images
from .sample import Sample

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (240, 210, 20),
           "black": (10, 10, 10), "purple": (140, 40, 170)}
SHAPES = ("circle", "square", "triangle")


def _draw_shapes(size, rng: random.Random, count: int):
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    drawn = []
    for i in range(count):
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        s = max(4, min(w, h) // (2 + i))
        x, y = rng.randint(0, max(0, w - s)), rng.randint(0, max(0, h - s))
        box = [x, y, x + s, y + s]
        if shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        else:
            draw.polygon([(x + s // 2, y), (x, y + s), (x + s, y + s)], fill=COLOURS[colour])
        drawn.append((colour, shape))
    return img, drawn


def noise(size: tuple[int, int], rng: random.Random):
    """A grey picture of uniform noise drawn from `rng` (PIL's effect_noise uses an unseeded C rand())."""
    from PIL import Image

    w, h = size
    return Image.frombytes("L", (w, h), rng.randbytes(w * h)).convert("RGB")


def image(kind: str, size: tuple[int, int], seed: int):
    """A deterministic image for `kind` plus what a correct answer would mention."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    w, h = size
    if kind == "document":
        img = Image.new("RGB", (w, h), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        total = rng.randint(10, 999)
        for i, line in enumerate(["INVOICE", f"ITEMS {rng.randint(1, 9)}", f"TOTAL {total}"]):
            draw.text((8, 8 + i * max(12, h // 8)), line, fill=(0, 0, 0))
        return img, {"answers": [str(total)]}
    if kind == "poetry":
        img = Image.new("RGB", (w, h), (20, 30, 70))
        draw = ImageDraw.Draw(img)
        r = max(3, min(w, h) // 8)
        draw.ellipse([w - 3 * r, r, w - r, 3 * r], fill=(250, 240, 200))
        draw.polygon([(0, h), (w // 3, h // 2), (2 * w // 3, h)], fill=(40, 80, 50))
        return img, {"keywords": ["月", "山"]}
    if kind == "memory_sweep":
        return noise((w, h), rng), {}
    if kind == "digits":  # its prompt names the value to read, by its label
        drawn = digit_images.draw(seed, (w, h))
        return drawn.image, {"answers": [drawn.answer], "prompt": drawn.prompt}
    img, drawn = _draw_shapes(size, rng, rng.randint(1, 3))
    names = " and ".join(f"a {c} {s}" for c, s in drawn)
    return img, {"references": [f"{names} on a white background", f"a white picture with {names}",
                                f"{len(drawn)} shapes: {names}"]}


_TURNS = ["What shapes are in the image?", "What colour is the largest shape?", "How many shapes are there?",
          "Is the background white?", "Where is the largest shape?"]


def samples(task, n: int, seed: int) -> list[Sample]:
    out = []
    for i in range(n):
        s = seed * 1_000_003 + i
        if task.kind == "video":
            out.append(Sample(id=f"syn-{i}", video=("synthetic", s)))
            continue
        size = task.image_size
        img, truth = image(task.kind if task.kind != "multiturn_vqa" else "caption", size, s)
        turns = []
        if task.kind == "multiturn_vqa":
            turns = [_TURNS[t % len(_TURNS)] for t in range(task.turns)]
            if task.turns >= 2:
                turns[-1] = turns[0]  # a repeated question: do the answers agree?
        out.append(Sample(id=f"syn-{i}", image=img, turns=turns, **truth))
    return out


def frames(seed: int, size: tuple[int, int], indices: list[int]):
    """Frames of a square moving across the picture; only the requested indices are drawn."""
    import numpy as np

    rng = random.Random(seed)
    w, h = size
    colour = COLOURS[rng.choice(sorted(COLOURS))]
    s = max(8, min(w, h) // 4)
    out = np.full((len(indices), h, w, 3), 255, dtype=np.uint8)
    for j, idx in enumerate(indices):
        x = (idx * 7) % max(1, w - s)
        out[j, h // 3:h // 3 + s, x:x + s] = colour
    return out
