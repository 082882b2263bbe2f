"""A cell's files beside the store: its claim while a process trains it, and its checkpoint after
every epoch, written so that a kill at any moment leaves the last whole one.

Solo cells keep Lightning's checkpoint (the whole trainer state), a fused group's cells their own
net and progress (``normlab.fused.run``): each path resumes only its own kind. A checkpoint that
cannot be read (a disk filled up, a copy cut short) is set aside, not resumed from
(``resumable``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from normlab.config.console import first_line, say

SOLO, FUSED = "last.ckpt", "fused.ckpt"


def claim_path(checkpoint_dir: Path, fingerprint: str) -> Path:
    """The lock a process holds while it plans and trains the cell (``normlab.tracking.locks``):
    two sweeps of one study never train a cell twice; the second finds it busy, or finished."""
    return checkpoint_dir / "claims" / f"{fingerprint}.lock"


def checkpoint_path(checkpoint_dir: Path, fingerprint: str, name: str = SOLO) -> Path:
    return checkpoint_dir / fingerprint / name


def previous(path: Path) -> Path:
    """Where ``write`` keeps the checkpoint before the last (``keep_previous``)."""
    return path.with_suffix(".previous")


def remove_checkpoint(checkpoint_dir: Path, fingerprint: str) -> None:
    shutil.rmtree(checkpoint_dir / fingerprint, ignore_errors=True)


def write(path: Path, save: Callable[[Path], None], keep_previous: bool = False) -> None:
    """``save`` into a temporary file, renamed to ``path``: a kill mid-write never leaves a torn
    checkpoint. ``keep_previous``: the one it replaces stays as ``previous(path)`` (linked, not
    moved: a kill between the two renames still leaves ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save(partial)
    if keep_previous and path.exists():
        linked = path.with_suffix(".link")
        linked.unlink(missing_ok=True)
        os.link(path, linked)
        os.replace(linked, previous(path))
    os.replace(partial, path)


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be loaded as a checkpoint, or None."""
    try:
        torch.load(path, map_location="cpu", weights_only=False)  # our own file: any object in it
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        return first_line(error, 120)
    return None


def resumable(path: Path) -> Path | None:
    """The newest checkpoint of ``path`` and its ``previous`` that can be read, or None; each one
    that cannot is moved to ``<checkpoint_dir>/unreadable/`` (kept for a look, never resumed
    from), one line saying so. A fused cell then resumes from the epoch before, a solo cell trains
    anew."""
    found = None
    for candidate in (path, previous(path)):
        if not candidate.exists():
            continue
        why = _unreadable(candidate)
        if why is None:
            found = found or candidate
            continue
        aside = candidate.parent.parent / "unreadable" / f"{candidate.parent.name}-{candidate.name}"
        aside.parent.mkdir(exist_ok=True)
        os.replace(candidate, aside)
        say(f"checkpoint {candidate} cannot be read ({why}): set aside as {aside}", logging.WARNING)
    return found
