"""Pictures of numbers to read, for the digits task: drawn offline from a seed with PIL alone - no font is
downloaded. A picture is a receipt (labelled lines, values right-aligned, a rule above the last) or a
table (label | value cells in a grid) of 1-6 lines; each line a label and a value of one format: 3-12 digit
integers, decimals, thousands separators, amounts with a currency sign, ISO and day/month/year dates, times.
One line is asked for by its label ("Read the TOTAL amount exactly as printed."); the others are there to be
told apart from it. Text comes in several sizes (shrunk until the picture holds it), turned by up to 3
degrees, with a little noise.

The font is PIL's own: `ImageFont.load_default(size=N)` gives its embedded scalable Aileron from Pillow 10.1
(with FreeType); an older Pillow, or one without FreeType, has only the 11 px bitmap font, drawn here
scaled up by a whole factor. Aileron has no ¥ or € (they come out as the missing-glyph box), so an amount's
sign is one the font draws ($, or the bitmap font's ¥) or the letters RMB; the answer never holds the sign.
The same seed and size give the same picture, byte for byte, and the same answer on the same Pillow (a
different Pillow may rasterize the glyphs differently)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

# label, what the prompt calls its value ("" when the label says it), the value's format
LABELS = (
    ("TOTAL", "amount", "amount"), ("SUBTOTAL", "amount", "amount"), ("TAX", "amount", "amount"),
    ("CASH", "amount", "amount"), ("CHANGE", "amount", "amount"), ("TIP", "amount", "amount"),
    ("INVOICE NO", "", "integer"), ("ACCOUNT", "number", "integer"), ("ORDER", "number", "integer"),
    ("SERIAL", "number", "integer"), ("WEIGHT KG", "", "decimal"), ("RATE", "", "decimal"),
    ("DISTANCE KM", "", "decimal"), ("UNITS", "", "thousands"), ("POINTS", "", "thousands"),
    ("DATE", "", "date_iso"), ("DUE DATE", "", "date_dmy"), ("SHIPPED", "date", "date_iso"),
    ("ISSUED", "date", "date_dmy"), ("TIME", "", "time"),
)
FORMATS = ("integer", "decimal", "thousands", "amount", "date_iso", "date_dmy", "time")
LAYOUTS = ("receipt", "table")
HEADERS = ("RECEIPT", "INVOICE", "STATEMENT", "SALES SLIP", "DELIVERY NOTE")
MIN_PX = 7  # the smallest text drawn; below it a picture holds fewer lines instead
MAX_ROTATION = 3.0  # degrees, either way
BITMAP_PX = 11  # the height of PIL's bitmap font


@dataclass(frozen=True)
class Drawn:
    image: object  # a PIL image, RGB
    answer: str  # the value asked for, as printed, without its currency sign
    prompt: str  # names it by its label
    label: str
    format: str
    layout: str


def value(fmt: str, rng: random.Random, currency: str = "$") -> tuple[str, str]:
    """(the answer, the text printed) of one value of format `fmt`: 3 to 12 digits."""
    if fmt == "integer":
        n = rng.randint(3, 12)
        text = str(rng.randint(10 ** (n - 1), 10**n - 1))
    elif fmt == "decimal":
        whole = rng.randint(1, 6)
        places = rng.randint(max(1, 3 - whole), 3)
        lo = 10 ** (whole - 1) if whole > 1 else 0
        text = f"{rng.randint(lo, 10**whole - 1)}.{rng.randint(0, 10**places - 1):0{places}d}"
    elif fmt in ("thousands", "amount"):  # as many digits before the point as likely
        n = rng.randint(4, 10) if fmt == "thousands" else rng.randint(1, 7)
        text = f"{rng.randint(10 ** (n - 1), 10**n - 1):,}" + (f".{rng.randint(0, 99):02d}" if fmt == "amount" else "")
    elif fmt in ("date_iso", "date_dmy"):
        y, m, d = rng.randint(2000, 2035), rng.randint(1, 12), rng.randint(1, 28)
        text = f"{y}-{m:02d}-{d:02d}" if fmt == "date_iso" else f"{d:02d}/{m:02d}/{y}"
    elif fmt == "time":
        h, mi, s = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
        text = f"{h:02d}:{mi:02d}" + (f":{s:02d}" if rng.random() < 0.5 else "")
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return text, (currency + text if fmt == "amount" else text)


def prompt(label: str, noun: str) -> str:
    return f"Read the {label}{' ' + noun if noun else ''} exactly as printed."


class Font:
    """Text of one size: PIL's scalable default font where this Pillow has it, else its bitmap font scaled
    up by a whole factor (nearest neighbour)."""

    def __init__(self, px: int):
        self.scalable = _scalable(px)
        self.factor = 1 if self.scalable is not None else max(1, round(px / BITMAP_PX))
        self.font = self.scalable if self.scalable is not None else _bitmap()
        # one line's box, the same for every text: the tallest and deepest characters drawn
        _, self.top, _, bottom = self.font.getbbox("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ$/-:.,")
        self.height = (bottom - self.top) * self.factor

    def width(self, text: str) -> int:
        return (self.font.getbbox(text)[2] if text else 0) * self.factor

    def draw(self, img, xy: tuple[int, int], text: str, fill) -> None:
        from PIL import Image, ImageDraw

        x, y = xy
        if self.factor == 1:
            ImageDraw.Draw(img).text((x, y - self.top), text, font=self.font, fill=fill)
            return
        w, h = self.font.getbbox(text)[2], self.height // self.factor
        mask = Image.new("L", (max(w, 1), max(h, 1)), 0)
        ImageDraw.Draw(mask).text((0, -self.top), text, font=self.font, fill=255)
        mask = mask.resize((mask.width * self.factor, mask.height * self.factor), Image.Resampling.NEAREST)
        img.paste(fill, (x, y, x + mask.width, y + mask.height), mask)


@cache
def _scalable(px: int):
    """PIL's embedded Aileron at `px` (Pillow >= 10.1 with FreeType), or None."""
    from PIL import ImageFont

    try:
        font = ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1: load_default takes no size
        return None
    return font if isinstance(font, ImageFont.FreeTypeFont) else None


@cache
def _bitmap():
    from PIL import ImageFont

    return ImageFont.load_default_imagefont() if hasattr(ImageFont, "load_default_imagefont") else \
        ImageFont.load_default()


def has_glyph(font, ch: str) -> bool:
    """Whether `font` draws `ch` as itself: some ink, and not the box it draws for a character it lacks."""
    try:
        mask = font.getmask(ch)
    except UnicodeError:  # the bitmap font knows Latin-1 only
        return False
    if mask.size[0] == 0 or not any(bytes(mask)):
        return False
    try:
        missing = font.getmask("\U0010fffd")  # a private-use character: no font of ours has it
    except UnicodeError:
        return True
    return (mask.size, bytes(mask)) != (missing.size, bytes(missing))


def currencies(font: Font) -> tuple[str, ...]:
    """The signs an amount may carry in this font: ¥, € or $ where it draws them, and RMB always."""
    return tuple(c for c in ("¥", "€", "$") if has_glyph(font.font, c)) + ("RMB ",)


def draw(seed: int, size: tuple[int, int]) -> Drawn:
    """A picture of `size` = (width, height) and the number it asks for, from `seed` alone."""
    from PIL import Image

    rng = random.Random(seed)
    w, h = size
    layout = rng.choice(LAYOUTS)
    fmt = rng.choice(FORMATS)  # the asked-for value's format, each as likely
    asked = rng.choice([x for x in LABELS if x[2] == fmt])
    chosen = rng.sample([x for x in LABELS if x != asked], rng.randint(2, 5))
    target = rng.randint(0, len(chosen))
    chosen.insert(target, asked)
    px = max(MIN_PX, int(h / (len(chosen) + 2) * rng.choice((0.55, 0.7, 0.85))))
    ink = tuple(rng.randint(0, 60) for _ in range(3))
    grey = rng.randint(230, 255)
    paper = tuple(grey - rng.randint(0, 12) for _ in range(3))
    signs = currencies(Font(px))
    lines = []
    for i, (label, _, kind) in enumerate(chosen):
        answer, text = value(kind, rng, rng.choice(signs))
        lines.append((label, text, answer, i == target))
    header = rng.choice(HEADERS)
    px, lines = _fit(px, lines, header, w, h, layout)
    img = Image.new("RGB", (w, h), paper)
    (_receipt if layout == "receipt" else _table)(img, Font(px), header, lines, ink)
    img = img.rotate(rng.uniform(-MAX_ROTATION, MAX_ROTATION), resample=Image.Resampling.BICUBIC, fillcolor=paper)
    noise = Image.frombytes("L", (w, h), rng.randbytes(w * h)).convert("RGB")  # effect_noise is unseeded
    img = Image.blend(img, noise, rng.uniform(0.02, 0.1))
    label, noun, _ = asked
    return Drawn(img, next(a for _, _, a, wanted in lines if wanted), prompt(label, noun), label, fmt, layout)


def _margin(w: int, h: int) -> int:
    return max(2, min(w, h) // 20)


def _fit(px: int, lines: list, header: str, w: int, h: int, layout: str) -> tuple[int, list]:
    """The largest size up to `px` at which the lines fit the picture; lines other than the asked-for one
    are left out (from the end) while even MIN_PX does not fit. The asked-for line alone is always drawn."""
    while True:
        font = Font(px)
        gap = max(1, font.height // 3)
        rows = len(lines) + 1  # the header
        pad = 2 * gap if layout == "table" else gap
        tall = rows * (font.height + pad) + 2 * _margin(w, h)
        if layout == "table":  # label | value cells, each padded by a gap both sides
            wide = max(font.width(x[0]) for x in lines) + max(font.width(x[1]) for x in lines) + 4 * gap
        else:  # the value right-aligned, three digits' room from the label
            wide = max(font.width(label) + font.width(text) for label, text, _, _ in lines) + 3 * font.width("0")
        wide = max(wide, font.width(header)) + 2 * _margin(w, h)
        if tall <= h and wide <= w:
            return px, lines
        if px > MIN_PX:
            px -= 1
        elif len(lines) > 1:
            drop = max(i for i, line in enumerate(lines) if not line[3])
            lines = lines[:drop] + lines[drop + 1:]
        else:
            return px, lines


def _receipt(img, font: Font, header: str, lines: list, ink) -> None:
    from PIL import ImageDraw

    w, h = img.size
    m = _margin(w, h)
    gap = max(1, font.height // 3)
    font.draw(img, ((w - font.width(header)) // 2, m), header, ink)
    y = m + font.height + gap
    for i, (label, text, _, _) in enumerate(lines):
        if i == len(lines) - 1 and len(lines) > 1:  # a rule above the last line, as above a receipt's total
            ImageDraw.Draw(img).line([(m, y - gap // 2 - 1), (w - m, y - gap // 2 - 1)], fill=ink, width=1)
        font.draw(img, (m, y), label, ink)
        font.draw(img, (w - m - font.width(text), y), text, ink)
        y += font.height + gap


def _table(img, font: Font, header: str, lines: list, ink) -> None:
    from PIL import ImageDraw

    w, h = img.size
    m = _margin(w, h)
    gap = max(1, font.height // 3)
    row = font.height + 2 * gap
    split = m + 2 * gap + max(font.width(label) for label, _, _, _ in lines)
    d = ImageDraw.Draw(img)
    font.draw(img, (m + gap, m + gap), header, ink)
    top = m + row
    for i, (label, text, _, _) in enumerate(lines):
        y = top + i * row
        font.draw(img, (m + gap, y + gap), label, ink)
        font.draw(img, (split + gap, y + gap), text, ink)
    bottom, right = top + len(lines) * row, min(w - m, split + 2 * gap + max(font.width(t) for _, t, _, _ in lines))
    for i in range(len(lines) + 1):
        d.line([(m, top + i * row), (right, top + i * row)], fill=ink, width=1)
    for x in (m, split, right):
        d.line([(x, top), (x, bottom)], fill=ink, width=1)
