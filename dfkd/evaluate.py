"""Test accuracy on the real held-out split, sharded across processes and gathered."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from dfkd.data import ImageFolder, tensor_dataset


def test_loader(data, normalize: bool = True) -> DataLoader:
    """The real test split of ``data.dataset`` as teacher inputs (its contract, ``data.*``); raw 0-1 pixels,
    resized and cropped the same way, with ``normalize=False`` (what exported files take)."""
    if data.dataset == "imagefolder":
        ds = ImageFolder(data.root, data, normalize)
    else:
        ds = tensor_dataset(data, train=False, normalize=normalize)
    return DataLoader(ds, batch_size=data.eval_batch_size, shuffle=False)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, accelerator) -> float:
    """Top-1 accuracy in percent; ``gather_for_metrics`` drops the padding of uneven shards."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        preds = model(x.to(accelerator.device)).argmax(1)
        preds, y = accelerator.gather_for_metrics((preds, y.to(accelerator.device)))
        correct += (preds == y).sum().item()
        total += y.numel()
    model.train(was_training)
    return 100.0 * correct / max(total, 1)
