"""Find, verify and load Fashion-MNIST as whole tensors (``normlab.data.batches`` cuts them).

The images are small enough (188 MB as float32) to live on the training device whole, so a batch
is one index into two tensors, with no per-sample collate.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_ROOT = Path.home() / ".cache" / "normlab"
ROOT_ENV_VAR = "NORMLAB_DATA"

# Decompressed sizes and sha256 (the .gz bytes differ between Debian and upstream; these do not).
FILES: dict[str, tuple[int, str]] = {
    "train-images-idx3-ubyte": (
        47_040_016,
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "train-labels-idx1-ubyte": (60_008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": (7_840_016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": (10_008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
TRAIN_SIZE = 60_000
TEST_SIZE = 10_000
CHANCE = 0.1  # accuracy of guessing among the 10 balanced classes
HOW_TO_GET = (
    "install the Debian package (apt-get install dataset-fashion-mnist) "
    "or let torchvision download it (data.download=true, needs internet)"
)


class DataError(RuntimeError):
    """Fashion-MNIST is missing or corrupt; the message is one sentence saying how to get it."""


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, 1, 28, 28) float32 in [0, 1], as torchvision's ToTensor gives
    labels: torch.Tensor  # (N,) int64


def _candidate_dirs(root: str | None) -> list[Path]:
    """An explicit ``root`` only; else ``$NORMLAB_DATA``, Debian's package, torchvision's download."""
    env = os.environ.get(ROOT_ENV_VAR)
    bases = [Path(root)] if root else [*([Path(env)] if env else []), DEBIAN_ROOT, DOWNLOAD_ROOT]
    # torchvision keeps its download under <root>/FashionMNIST/raw
    return [d for base in bases for d in (base, base / "FashionMNIST" / "raw")]


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        return handle.read()


def _verified_bytes(directory: Path) -> dict[str, bytes] | None:
    """The four decompressed files of ``directory``, or None if any is absent; DataError if corrupt."""
    paths = {name: _find(directory, name) for name in FILES}
    if any(path is None for path in paths.values()):
        return None
    contents = {}
    for name, path in paths.items():
        try:
            raw = _read(path)
        except (OSError, EOFError) as error:
            raise DataError(f"Fashion-MNIST file {path} cannot be read ({error}); {HOW_TO_GET}.") from error
        size, sha256 = FILES[name]
        if len(raw) != size or hashlib.sha256(raw).hexdigest() != sha256:
            raise DataError(
                f"Fashion-MNIST file {path} is corrupt (size or sha256 differs from the published one); "
                f"{HOW_TO_GET}."
            )
        contents[name] = raw
    return contents


def _download() -> None:
    from torchvision.datasets import FashionMNIST  # only needed off Debian

    for train in (True, False):
        FashionMNIST(str(DOWNLOAD_ROOT), train=train, download=True)


def locate(root: str | None = None, download: bool = True) -> dict[str, bytes]:
    """Verified raw bytes of the four Fashion-MNIST files, looking in order at ``root``,
    ``$NORMLAB_DATA``, Debian's package, then torchvision's download (when ``download``).
    A ``root`` given explicitly must hold them: a typo there should not silently train on other files."""
    searched = _candidate_dirs(root)
    for directory in searched:
        found = _verified_bytes(directory)
        if found is not None:
            return found
    if root:
        raise DataError(f"data.root={root} holds no verified Fashion-MNIST files; {HOW_TO_GET}.")
    if download:
        try:
            _download()
        except Exception as error:  # any network or disk failure ends in the same advice
            raise DataError(
                f"Fashion-MNIST was not found and its download failed ({error}); {HOW_TO_GET}."
            ) from error
        found = _verified_bytes(DOWNLOAD_ROOT / "FashionMNIST" / "raw")
        if found is not None:
            return found
    dirs = ", ".join(str(d) for d in searched[::2])
    raise DataError(f"Fashion-MNIST was not found in {dirs}; {HOW_TO_GET}.")


@functools.cache
def _verified(root: str | None, download: bool) -> dict[str, bytes]:
    """``locate``, once per process: ``check`` and the decoding after it read and hash the files once."""
    return locate(root, download)


def check(root: str | None, download: bool) -> None:
    """Before anything is recorded: the files a cell would train on are found and verified, else
    DataError in one sentence. A typo in ``root`` or a file cut short should fail here, not after a
    run was started. (Verified only, 0.3 s: a cell that is then skipped decodes nothing, 1 s.)"""
    _verified(root, download)


def _images(raw: bytes) -> torch.Tensor:
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    return torch.from_numpy(pixels.astype(np.float32) / 255.0)


def _labels(raw: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=8).astype(np.int64))


@functools.cache
def _decoded(root: str | None, download: bool) -> tuple[Split, Split]:
    """All of both splits on the CPU, decoded once per process: a sweep's workers reuse them."""
    raw = _verified(root, download)
    train = Split(_images(raw["train-images-idx3-ubyte"]), _labels(raw["train-labels-idx1-ubyte"]))
    test = Split(_images(raw["t10k-images-idx3-ubyte"]), _labels(raw["t10k-labels-idx1-ubyte"]))
    return train, test


def load(
    root: str | None = None,
    download: bool = True,
    train_subset: int | None = None,
    device: torch.device | str = "cpu",
    test_subset: int | None = None,
) -> tuple[Split, Split]:
    """Train and test splits on ``device``; ``train_subset`` takes the first N training images,
    ``test_subset`` the first N test images (quick runs)."""
    if train_subset is not None and not 1 <= train_subset <= TRAIN_SIZE:
        raise ValueError(f"data.train_subset must be between 1 and {TRAIN_SIZE}, got {train_subset}")
    train, test = _decoded(root, download)
    n, m = train_subset or TRAIN_SIZE, test_subset or TEST_SIZE
    return (
        Split(train.images[:n].to(device), train.labels[:n].to(device)),
        Split(test.images[:m].to(device), test.labels[:m].to(device)),
    )
