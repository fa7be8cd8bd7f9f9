"""Fashion-MNIST: its loading routes (torchvision, then the Debian package), a short distillation from a teacher
without BatchNorm, and plain KD on the real training split (scheme=real_data), the upper bound of a pair."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
import torch

from dfkd import offline
from dfkd.data import IDX_FILES, LOADERS
from dfkd.errors import DfkdError

REPO = Path(__file__).resolve().parents[1]
CACHE = Path("~/.cache/dfkd/data").expanduser()


def idx_bytes(data: torch.Tensor) -> bytes:
    """An IDX file: magic (uint8, dimensions), sizes as big-endian uint32, then the bytes."""
    return struct.pack(">HBB", 0, 8, data.dim()) + struct.pack(f">{data.dim()}I", *data.shape) + \
        data.to(torch.uint8).numpy().tobytes()


def tiny_idx(tmp: Path, files) -> None:
    """Four small IDX files, as a package would hold them: 6 train and 4 test images with labels 0-5 / 0-3."""
    for name in files:
        n = 6 if name.startswith("train") else 4
        data = torch.arange(n) if "labels" in name else torch.arange(n * 28 * 28).remainder(256).view(n, 28, 28)
        (tmp / name).write_bytes(idx_bytes(data))


@pytest.fixture
def no_download(monkeypatch):
    """torchvision's download fails, as on a machine that reaches package registries only."""
    import torchvision.datasets

    def fail(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", fail)


def test_when_torchvision_cannot_download_the_package_route_puts_the_files_in_place(tmp_path, no_download, monkeypatch):
    calls = []

    def fetch(tmp: Path, files):
        calls.append(list(files))
        tiny_idx(tmp, files)
    monkeypatch.setitem(offline.ROUTES, "FashionMNIST", (fetch, ("sh",), "a stubbed package"))
    images, labels = LOADERS["fashion_mnist"](tmp_path, True, True)
    assert calls == [list(IDX_FILES)], "the fallback ran once, for the four files"
    assert sorted(p.name for p in (tmp_path / "FashionMNIST" / "raw").iterdir()) == sorted(IDX_FILES)
    assert images.shape == (6, 1, 28, 28) and labels.tolist() == [0, 1, 2, 3, 4, 5]
    test_images, test_labels = LOADERS["fashion_mnist"](tmp_path, False, True)
    assert test_images.shape == (4, 1, 28, 28) and len(calls) == 1, "files in place: nothing fetched again"


def test_when_no_route_works_one_line_says_how_to_get_the_data(tmp_path, no_download, monkeypatch):
    monkeypatch.setattr(offline.shutil, "which", lambda tool: None)
    with pytest.raises(DfkdError) as err:
        LOADERS["fashion_mnist"](tmp_path, True, True)
    message = str(err.value)
    assert "\n" not in message and "apt-get" in message and "docs/data.md" in message
    assert not (tmp_path / "FashionMNIST" / "raw").exists() or not any((tmp_path / "FashionMNIST" / "raw").iterdir())


def test_without_download_a_missing_dataset_is_one_line(tmp_path):
    with pytest.raises(DfkdError, match="FashionMNIST not found under .*data.download=true"):
        LOADERS["fashion_mnist"](tmp_path, False, False)


@pytest.fixture(scope="module")
def fashion():
    """The real Fashion-MNIST (cache, torchvision, or the Debian package); a visible skip when none works."""
    try:
        return LOADERS["fashion_mnist"](CACHE, False, True)
    except DfkdError as err:
        pytest.skip(f"needs real Fashion-MNIST: {err}")


def test_the_real_files_are_the_canonical_test_split(fashion):
    images, labels = fashion
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.uint8
    assert labels[:5].tolist() == [9, 2, 1, 1, 6] and labels.bincount().tolist() == [1000] * 10


def test_the_debian_package_route_unpacks_the_canonical_files(tmp_path, fashion):
    """The real route, end to end: apt-get download, dpkg-deb, un-gzip (skipped visibly without apt-get)."""
    import shutil

    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("apt-get / dpkg-deb not on this machine: the Debian route cannot run here")
    try:
        offline.fetch_offline("FashionMNIST", tmp_path / "raw", IDX_FILES[2:], reason="test")
    except DfkdError as err:
        pytest.skip(f"the Debian package is not reachable from here: {err}")
    raw = (tmp_path / "raw" / "t10k-labels-idx1-ubyte").read_bytes()
    assert struct.unpack(">I", raw[4:8])[0] == 10000 and list(raw[8:13]) == [9, 2, 1, 1, 6]


@pytest.fixture(scope="module")
def fashion_teacher(tmp_path_factory, fashion, one_thread) -> Path:
    """A LeNet-5 (no BatchNorm) trained 60 steps on real Fashion-MNIST (resized to 32x32, as the default does)."""
    from dfkd.contract import resolve
    from dfkd.schema import Config
    from dfkd.teacher import train_teacher

    cfg = Config()  # as teachers/train.py makes it: the architecture's input, the dataset's classes
    cfg.teacher.name, cfg.data.dataset = "lenet5", "fashion_mnist"
    resolve(cfg)
    out = tmp_path_factory.mktemp("teacher") / "lenet5_fashion.safetensors"
    card = train_teacher("lenet5", cfg.data, epochs=1, out=str(out), max_steps=60)
    assert card["dataset"] == "fashion_mnist" and card["test_accuracy"] > 40, "far better than chance (10 %)"
    return out


def distill(tmp: Path, teacher: Path, *extra: str) -> dict:
    from dfkd.config import load_config
    from dfkd.trainer import distill as run

    cfg = load_config(["data.dataset=fashion_mnist", f"teacher.checkpoint={teacher}", "teacher.train_if_missing=false",
                       "student_updates=40", "eval_every=20", "checkpoint_every=20", "batch_size=32", "pool.size=2000",
                       f"out_dir={tmp}", "logger=none", *extra])
    return run(cfg)


def test_a_short_data_free_run_from_a_fashion_teacher_without_batchnorm(tmp_path, fashion_teacher, one_thread):
    summary = distill(tmp_path, fashion_teacher)
    assert summary["teacher_acc"] > 40 and 0 < summary["student_final_acc"] <= 100
    config = (tmp_path / Path(summary["run_dir"]).name / "config.yaml").read_text()
    assert "dataset: fashion_mnist" in config and "bn: 0" in config, "no BatchNorm: the BN prior is decided off"


def test_real_data_kd_learns_from_the_training_split(tmp_path, fashion_teacher, one_thread):
    """Exact resume of scheme=real_data is tested with the other schemes (tests/test_resume.py)."""
    summary = distill(tmp_path, fashion_teacher, "scheme=real_data")
    assert summary["scheme"] == "real_data" and summary["student_final_acc"] > 30, "KD on real images beats chance"


def test_real_data_needs_a_training_split(tmp_path, fashion_teacher):
    with pytest.raises(DfkdError, match="scheme=real_data trains on a real training split"):
        distill(tmp_path, fashion_teacher, "scheme=real_data", "data.dataset=none")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
