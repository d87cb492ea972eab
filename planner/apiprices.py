"""Prices of hosted models (an OpenAI-compatible endpoint billed per token): the catalog and the bound on one
call's cost. `budget compare` prices each call from the `usage` the server returns (planner.money.metered) and,
before sending it, reserves the most it can cost - its prompt's tokens at most (`prompt_bound`) and
max_tokens of output - against the run's cap and pool.

The catalog is `planner/data/api_models.csv`; a user's `$BUDGET_HOME/catalog/api_models.csv` replaces it row
by row (per model). Columns: model,input_per_1m,output_per_1m,currency,source,date and optionally image_rule
(how an image becomes prompt tokens: `openai-tiles`, `openai-patches`, `dashscope-28px`), image_max_tokens
(the most one image can cost under the provider's documented rule) and notes.

A prompt's tokens are bounded without the hosted model's tokenizer: a byte-level BPE token covers at least
one byte, so text costs at most its UTF-8 bytes (plus a few tokens of framing per message); an image at most
what its provider's published rule gives for its size, or the catalog's per-image bound, whichever is lower
(both are upper bounds). Pure: the standard library, pydantic."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path

from .errors import CatalogError
from .money import MILLION
from .offerfiles import dec, header, records, split_comments

COLUMNS = ["model", "input_per_1m", "output_per_1m", "currency", "source", "date"]
OPTIONAL = ["image_rule", "image_max_tokens", "notes"]
RULES = ("", "openai-tiles", "openai-patches", "dashscope-28px")
MESSAGE_TOKENS = 8  # role and framing tokens of one chat message (OpenAI counts 3-4), generously
REPLY_TOKENS = 8    # the assistant reply's priming
MAX_FILE = 4 << 20  # a price list is kilobytes; anything bigger is not one


@dataclass(frozen=True)
class ApiPrice:
    model: str
    input_per_1m: Decimal
    output_per_1m: Decimal
    currency: str
    source: str
    date: str
    image_rule: str = ""
    image_max_tokens: int | None = None
    notes: str = ""

    @property
    def free(self) -> bool:
        return self.input_per_1m == 0 and self.output_per_1m == 0


def read(text: str, path: str) -> list[ApiPrice]:
    """The rows of one api_models.csv; a malformed row is a CatalogError naming its line."""
    _, lines = split_comments(text)
    cols = header(lines, COLUMNS, path)
    out = []
    for n, values in records(lines[1:]):
        if len(values) != len(cols):
            raise CatalogError(f"{path}:{n}: {len(values)} fields, expected {len(cols)}",
                               f"columns: {','.join(cols)}")
        row = dict(zip(cols, (v.strip() for v in values)))
        where = f"{path}:{n}"
        if not row["model"]:
            raise CatalogError(f"{where}: no model name", "each row names the API's model id, e.g. gpt-4o")
        try:
            prices = [dec(row[k], k) for k in ("input_per_1m", "output_per_1m")]
        except ValueError as e:
            raise CatalogError(f"{where}: {e}", "prices are per 1M tokens, 0 or more") from None
        rule = row.get("image_rule", "")
        if rule not in RULES:
            raise CatalogError(f"{where}: unknown image_rule {rule!r}", f"one of: {', '.join(r for r in RULES if r)}"
                               " or empty")
        cap = row.get("image_max_tokens", "")
        if cap and (not cap.isdigit() or int(cap) <= 0):
            raise CatalogError(f"{where}: image_max_tokens {cap!r} is not a positive whole number",
                               "the most tokens one image can cost, or empty")
        currency = row["currency"].upper()
        if not currency.isalpha() or len(currency) != 3:
            raise CatalogError(f"{where}: currency {row['currency']!r}", "a 3-letter code such as USD or CNY")
        out.append(ApiPrice(row["model"], prices[0], prices[1], currency, row["source"], row["date"], rule,
                            int(cap) if cap else None, row.get("notes", "")))
    return out


def load(user_dir: Path | None = None) -> dict[str, ApiPrice]:
    """The bundled catalog, each model replaced by the user's row where `user_dir`/api_models.csv has one."""
    files = [Path(str(resources.files("planner") / "data" / "api_models.csv"))]
    if user_dir is not None and (Path(user_dir) / "api_models.csv").is_file():
        files.append(Path(user_dir) / "api_models.csv")
    out: dict[str, ApiPrice] = {}
    for p in files:
        if p.stat().st_size > MAX_FILE:
            raise CatalogError(f"{p}: over {MAX_FILE >> 20} MiB: not a price list", "keep one row per model")
        out.update({r.model: r for r in read(p.read_text(encoding="utf-8"), str(p))})
    return out


def price_of(model: str, prices: dict[str, ApiPrice], free: bool = False) -> ApiPrice:
    """The model's price; an unknown model is refused before any call (`free`: an endpoint the user runs
    without charge - a local vLLM - gets a zero price)."""
    if model in prices:
        return prices[model]
    if free:
        return ApiPrice(model, Decimal(0), Decimal(0), "CNY", "--free: an endpoint that charges nothing", "")
    known = ", ".join(sorted(prices)[:12]) or "none"
    raise CatalogError(f"no price for the API model {model!r}: its calls cannot be capped",
                       f"add a row for it to $BUDGET_HOME/catalog/api_models.csv ({','.join(COLUMNS)}), or pass "
                       f"--free for an endpoint that charges nothing; priced: {known}")


# ------------------------------------------------------------------------------------ bounds of one call


def openai_tiles(width: int, height: int) -> int:
    """GPT-4o/4.1 at detail high: fit in 2048x2048, shortest side down to 768, 85 + 170 per 512-px tile."""
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        w, h = w * 2048 / max(w, h), h * 2048 / max(w, h)
    if min(w, h) > 768:
        w, h = w * 768 / min(w, h), h * 768 / min(w, h)
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def dashscope_28px(width: int, height: int) -> int:
    """Qwen-VL on DashScope: one token per 28x28 px (sides rounded up; at least the documented 4), plus the two
    vision markers. Qwen3-VL and newer snapshots count 32x32 px: the 28-px count bounds them too."""
    return max(4, math.ceil(width / 28) * math.ceil(height / 28)) + 2


_RULE = {"openai-tiles": openai_tiles, "dashscope-28px": dashscope_28px}


def image_bound(price: ApiPrice, width: int, height: int) -> int | None:
    """The most an image of this size can cost in prompt tokens: the lower of its rule's count and the
    catalog's per-image bound (both bound it); None when neither is known."""
    bounds = [b for b in (_RULE[price.image_rule](width, height) if price.image_rule in _RULE else None,
                          price.image_max_tokens) if b is not None]
    return min(bounds) if bounds else None


def prompt_bound(price: ApiPrice, text_bytes: int, messages: int, images: Iterable[tuple[int, int]]) -> int:
    """The most prompt tokens a call can be billed for: its text's UTF-8 bytes, framing per message, each
    image's bound. CatalogError when an image's cost cannot be bounded for a priced model."""
    total = text_bytes + MESSAGE_TOKENS * messages + REPLY_TOKENS
    for w, h in images:
        b = image_bound(price, w, h)
        if b is None:
            if price.free:
                continue
            raise CatalogError(f"{price.model}: how many tokens an image costs is not known, so a call with one "
                               "cannot be capped", "give the model an image_rule or image_max_tokens in "
                               "$BUDGET_HOME/catalog/api_models.csv")
        total += b
    return total


def call_bound(price: ApiPrice, prompt_tokens: int, max_tokens: int) -> Decimal:
    """The most a call can cost, in the price's currency: the prompt's bound plus max_tokens of output."""
    return (prompt_tokens * price.input_per_1m + max_tokens * price.output_per_1m) / MILLION
