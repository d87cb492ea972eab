"""Printer of `budget data init`: the template manifests written (or kept) for a plan's own data."""

from __future__ import annotations

from . import base


def data_init(written, plan_path, copied) -> None:
    out = base.out
    if copied is not None:
        out.print(f"copied the shipped plan to {copied}: its data folder is beside the copy")
    if not written:
        out.print(f"{plan_path} reads no local data: its tasks fetch public data or draw synthetic samples")
        return
    for w in written:
        if w.created:
            out.print(f"wrote {w.path} (task {w.task}, {w.kind}): replace its example lines with yours, one JSON "
                      f"object per sample; put the files it names under {w.path.parent / w.media_dir}/", soft_wrap=True)
        else:
            out.print(f"kept {w.path} (task {w.task}): it exists already", soft_wrap=True)
    out.print(f"then `budget run {plan_path}` checks every file before launching (README: manifest format)",
              soft_wrap=True)
