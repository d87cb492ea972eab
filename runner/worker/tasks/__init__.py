"""Task kinds, one module each, all with the same small interface (see base.py)."""

from __future__ import annotations

from . import caption, document, fp16_verify, memory_sweep, multiturn_vqa, poetry, video

KINDS = {"caption": caption, "document": document, "multiturn_vqa": multiturn_vqa, "poetry": poetry,
         "memory_sweep": memory_sweep, "video": video, "fp16_verify": fp16_verify}
