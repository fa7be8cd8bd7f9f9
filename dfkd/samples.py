"""samples.png: what the generator draws at the end of a run, each image labelled with the teacher's predicted class
and its confidence, ordered by class, so one look says which classes the generator makes and how surely."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from dfkd.models import evaluating
from dfkd.models.generator import draw
from dfkd.models.normalize import Normalize
from dfkd.schema import Config

COLUMNS = 8
NAME_CHARS = 12  # longer class names are cut, so that a label stays under its image
LABEL_HEIGHT = 0.22  # of an image's height: the white band under it that holds its label
# Datasets whose class names are known without reading their files (torchvision's FashionMNIST.classes, CIFAR-10's
# batches.meta); MNIST's and digits' names are their indices.
CLASS_NAMES = {
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}


def class_names(cfg: Config) -> Optional[List[str]]:
    """The teacher's class names in its class order: ``data.classes``, an ImageFolder's folder names, or the
    dataset's own names (``CLASS_NAMES``); None where the run knows only indices."""
    d = cfg.data
    names = list(d.classes) if d.classes else CLASS_NAMES.get(d.dataset)
    if names is None and d.dataset == "imagefolder" and d.root and Path(d.root).expanduser().is_dir():
        from dfkd.data import class_folders  # late: only an ImageFolder run reads its folders

        folders = class_folders(Path(d.root).expanduser())
        names = [name for name, _ in sorted(folders.items(), key=lambda item: item[1])] or None
    return names if names is not None and len(names) == d.num_classes else None


def generated_images(generator: nn.Module, cfg: Config) -> torch.Tensor:
    """The generator's images from fixed codes (seed 0), drawn as in training (``draw``): 64, or 16 above 64x64
    pixels; the teacher's input."""
    n = 64 if cfg.data.image_size <= 64 else 16
    return draw(generator, cfg.generator.nz, n, seed=0, batch=n)


def teacher_labels(teacher: nn.Module, x: torch.Tensor, names: Optional[Sequence[str]] = None
                   ) -> Tuple[List[int], List[str]]:
    """The order to show ``x`` in (by the teacher's predicted class, most confident first) and, in that order,
    each image's label: the class's name (else its index) and the teacher's softmax probability for it."""
    device = next(teacher.parameters(), torch.zeros(0)).device
    with torch.no_grad(), evaluating(teacher):
        probs = teacher(x.to(device)).float().softmax(1).cpu()
    confidence, predicted = probs.max(1)
    order = sorted(range(len(x)), key=lambda i: (int(predicted[i]), -float(confidence[i])))
    name = (lambda c: names[c][:NAME_CHARS]) if names else str
    return order, [f"{name(int(predicted[i]))} {float(confidence[i]):.2f}" for i in order]


def draw_grid(pixels: torch.Tensor, labels: Sequence[str], path: Path) -> List[str]:
    """``pixels`` (N, C, H, W in 0-1; grey when C is 1) in a grid of ``COLUMNS``, each with its label underneath,
    as a PNG at ``path``; returns the labels as drawn. One matplotlib image and its texts: fast at 64 images."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    n, c, h, w = pixels.shape
    rows, band = -(-n // COLUMNS), max(1, round(LABEL_HEIGHT * h))
    cell_h, cell_w = h + band + 1, w + 1  # a 1-pixel white gap between images, as torchvision's grids
    canvas = torch.ones(c, rows * cell_h + 1, COLUMNS * cell_w + 1)
    for i in range(n):
        top, left = (i // COLUMNS) * cell_h + 1, (i % COLUMNS) * cell_w + 1
        canvas[:, top:top + h, left:left + w] = pixels[i]
    fig = Figure(figsize=(COLUMNS * 1.1, rows * 1.1 * cell_h / cell_w))
    ax = fig.add_axes((0, 0, 1, 1))
    grey = c == 1
    ax.imshow((canvas[0] if grey else canvas.permute(1, 2, 0)).numpy(), cmap="gray" if grey else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_axis_off()
    for i, label in enumerate(labels):
        ax.text((i % COLUMNS) * cell_w + 1 + w / 2, (i // COLUMNS) * cell_h + 1 + h + band / 2, label,
                ha="center", va="center", fontsize=7)
    fig.savefig(path, dpi=100)
    return [t.get_text() for t in ax.texts]


def save_samples(generator: nn.Module, teacher: nn.Module, cfg: Config, path: Path) -> List[str]:
    """samples.png: the generator's images in pixels (the teacher's mean/std undone), ordered by the teacher's
    predicted class and labelled with it and its confidence (``teacher_labels``); returns the labels drawn."""
    x = generated_images(generator, cfg)
    order, labels = teacher_labels(teacher, x, class_names(cfg))
    return draw_grid(Normalize(cfg.data.mean, cfg.data.std).invert(x[order]).clamp(0, 1), labels, path)
