"""Top-1 accuracy on real held-out images: the real test split as teacher inputs, sharded across processes and
gathered; used by the run (teacher check, evaluations), export (parity images) and ``dfkd evaluate``. The same
pass can count (label, prediction) pairs: how the predictions spread over the classes (``perplexity``)."""
from __future__ import annotations

import sys
from typing import Callable, Dict, Iterable, Iterator, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dfkd.data import GivenDataset, ImageFolder, UnlabelledFolder, tensor_dataset
from dfkd.errors import DfkdError
from dfkd.models import evaluating
from dfkd.schema import DataConfig

Predict = Callable[[torch.Tensor], torch.Tensor]  # images -> logits


def evaluation_loader(data, normalize: bool = True, given: Optional[Dataset] = None) -> DataLoader:
    """The real test split of ``data.dataset`` as teacher inputs (its contract, ``data.*``); raw 0-1 pixels,
    resized and cropped the same way, with ``normalize=False`` (what exported files take). ``given``: the
    Dataset of ``data.dataset=given``, passed to the Python API."""
    if data.dataset == "given":
        if given is None:
            raise DfkdError("data.dataset=given is a torch Dataset passed to dfkd.distill(eval_data=...); on the "
                            "command line choose another data.dataset (or data.root=FOLDER)")
        ds = GivenDataset(given, data, normalize)
    elif data.dataset == "imagefolder":
        ds = ImageFolder(data.root, data, normalize)
    elif data.dataset == "unlabelled":
        ds = UnlabelledFolder(data.root, data, normalize)
    elif data.dataset == "none":
        raise DfkdError("data.dataset=none has no real images to load; choose a dataset or data.root=FOLDER")
    else:
        ds = tensor_dataset(data, train=False, normalize=normalize)
    return DataLoader(ds, batch_size=data.eval_batch_size, shuffle=False)


def real_batches(card: Dict, limit: Optional[int] = None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """The real test split of an exported student's card as RAW 0-1 images (mean 0, std 1), first ``limit``."""
    left = sys.maxsize if limit is None else limit
    for x, y in evaluation_loader(DataConfig(**card["data"]), normalize=False):
        if left <= 0:
            return
        yield x[:left], y[:left]
        left -= len(y)


@torch.no_grad()
def accuracy(predict: Predict, batches: Iterable, accelerator=None,
             confusion: Optional[torch.Tensor] = None) -> Tuple[float, int]:
    """Top-1 accuracy in percent of ``predict`` over (images, labels) batches, and the number of images.

    With an ``accelerator``, each process holds a shard: ``gather_for_metrics`` joins them and drops
    the padding of uneven shards. With ``confusion`` (a zero N x N tensor, N classes), each (label, prediction)
    pair is counted in it too: row = true class, column = predicted class."""
    correct = total = 0
    for x, y in batches:
        preds = predict(x).argmax(1)
        y = y.to(preds.device)
        if accelerator is not None:
            preds, y = accelerator.gather_for_metrics((preds, y))
        correct += (preds == y).sum().item()
        total += y.numel()
        if confusion is not None:
            n = len(confusion)
            confusion += torch.bincount((y * n + preds).cpu(), minlength=n * n)[:n * n].view(n, n)
    return 100.0 * correct / max(total, 1), total


def evaluate(model: nn.Module, loader: DataLoader, accelerator, confusion: Optional[torch.Tensor] = None) -> float:
    """Top-1 accuracy in percent of ``model`` (in eval mode, then as it was) on a sharded test loader; with
    ``confusion``, its (label, prediction) counts too (``accuracy``)."""
    with evaluating(model):
        acc, _ = accuracy(lambda x: model(x.to(accelerator.device)), loader, accelerator, confusion)
    return acc


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of a histogram: how many classes' worth it spreads over (N when uniform, 1 on a single one)."""
    p = counts.double() / max(int(counts.sum()), 1)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
