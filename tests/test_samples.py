"""samples.png shows what the generator draws, each image labelled with the teacher's predicted class (its name where
the run knows names) and confidence, ordered by class; grey images in grey."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

import dfkd.models  # noqa: F401  (registers the zoo)
from dfkd.config import load_config
from dfkd.models import Generator
from dfkd.samples import class_names, generated_images, save_samples, teacher_labels

pytestmark = pytest.mark.usefixtures("one_thread")

PNG = b"\x89PNG\r\n\x1a\n"


def grey_config(*keys: str):
    return load_config(["data.channels=1", "data.image_size=32", "data.num_classes=10", "data.mean=[0.1307]",
                        "data.std=[0.3081]", *keys])


def test_labels_are_the_teachers_predicted_class_and_confidence_ordered_by_class():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).train()
    x = torch.randn(12, 1, 4, 4)
    with torch.no_grad():
        probs = teacher(x).softmax(1)
    confidence, predicted = probs.max(1)
    assert len(set(predicted.tolist())) >= 2  # else the ordering would be untested
    order, labels = teacher_labels(teacher, x, ["cat", "dog", "emu"])
    assert [int(predicted[i]) for i in order] == sorted(predicted.tolist())
    for a, b in zip(order, order[1:]):  # within a class, the most confident first
        assert predicted[a] < predicted[b] or confidence[a] >= confidence[b]
    assert labels == [f"{['cat', 'dog', 'emu'][int(predicted[i])]} {float(confidence[i]):.2f}" for i in order]
    assert teacher_labels(teacher, x)[1] == [f"{int(predicted[i])} {float(confidence[i]):.2f}" for i in order]
    assert teacher.training  # the teacher's mode is left as it was


def test_class_names_come_from_the_config_the_dataset_or_the_folders_else_none(tmp_path):
    assert class_names(grey_config("data.dataset=fashion_mnist"))[:2] == ["T-shirt/top", "Trouser"]
    assert class_names(grey_config("data.dataset=mnist")) is None  # digits: their index is their name
    named = [f"c{i}" for i in range(10)]
    assert class_names(grey_config("data.dataset=mnist", f"data.classes=[{','.join(named)}]")) == named
    for name in ("zebra", "ant", "bee"):
        (tmp_path / name).mkdir()
    folders = grey_config("data.dataset=imagefolder", f"data.root={tmp_path}", "data.num_classes=3")
    assert class_names(folders) == ["ant", "bee", "zebra"]  # sorted, as torchvision's ImageFolder labels them
    assert class_names(grey_config("data.dataset=imagefolder", f"data.root={tmp_path}")) is None  # 3 names, 10 classes
    gone = grey_config("data.dataset=imagefolder", f"data.root={tmp_path / 'not-here'}", "data.num_classes=3")
    assert class_names(gone) is None, "a root that is not there (evaluation data given elsewhere): indices"


def test_samples_png_is_a_grey_grid_labelled_by_the_teacher(tmp_path):
    cfg = grey_config("data.dataset=fashion_mnist")
    torch.manual_seed(0)
    generator = Generator(cfg.generator.nz, 8, 32, 1, cfg.data.mean, cfg.data.std)
    teacher = timm.create_model("lenet5", num_classes=10).eval()
    drawn = save_samples(generator, teacher, cfg, tmp_path / "samples.png")
    assert drawn == teacher_labels(teacher, generated_images(generator, cfg), class_names(cfg))[1]
    assert len(drawn) == 64 and all(label.rsplit(" ", 1)[0] in class_names(cfg) for label in drawn)
    assert (tmp_path / "samples.png").read_bytes()[:8] == PNG
    with Image.open(tmp_path / "samples.png") as png:
        png.verify()
    with Image.open(tmp_path / "samples.png") as png:
        rgb = torch.from_numpy(np.asarray(png.convert("RGB")).copy())
    r, g, b = rgb.unbind(-1)
    assert torch.equal(r, g) and torch.equal(g, b)  # grey images in grey (and black labels): no colour map
    assert len(r.unique()) > 16  # drawn images, not a blank grid


def test_drawing_images_leaves_the_generator_as_it_was():
    """``draw`` makes the same images from the same seed, in train mode (batch statistics) whatever the generator's
    mode, and never moves its BatchNorm running statistics: drawing for a grid or a calibration changes no run."""
    from dfkd.models.generator import draw

    torch.manual_seed(0)
    generator = Generator(nz=16, ngf=4, image_size=8, channels=1, mean=[0.5], std=[0.5]).eval()
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    first = draw(generator, 16, n=10, seed=3, batch=4)
    assert first.shape == (10, 1, 8, 8) and not generator.training
    assert all(torch.equal(v, before[k]) for k, v in generator.state_dict().items())
    assert torch.equal(first, draw(generator, 16, n=10, seed=3, batch=4))
    train_mode = generator.train()(torch.randn(10, 16, generator=torch.Generator().manual_seed(3))[:4])
    assert torch.allclose(first[:4], train_mode, atol=1e-6), "the first batch is drawn on batch statistics"
