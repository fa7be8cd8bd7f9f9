"""Recipes: a typed schema (dataclasses), YAML files in ``recipes/``, ``key=value`` overrides, clear errors.

Every default lives here. A recipe only states what differs from these defaults.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import List, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
SCHEMES = ("two_stage", "one_stage", "hybrid")


class DfkdError(Exception):
    """A user mistake (bad recipe, key, value, file): reported as one line and a non-zero exit."""


@dataclass
class TeacherConfig:
    name: str = "lenet5"  # a timm model name
    checkpoint: Optional[str] = None  # .safetensors, or .pt/.pth read with weights_only=True
    pretrained: bool = False  # timm pretrained weights by name (ImageNet teachers)
    train_if_missing: bool = False  # train one with teachers/train.py when checkpoint is absent
    train_epochs: int = 2  # epochs of that teacher training


@dataclass
class StudentConfig:
    name: str = "lenet5_half"
    optimizer: str = "sgd"  # sgd (DFAD) | adam (AdamW)
    lr: float = 0.1  # SGD, as in DFAD
    momentum: float = 0.9
    weight_decay: float = 5e-4


@dataclass
class GeneratorConfig:
    nz: int = 256
    ngf: int = 64  # DFAD's width; 16 is a light generator for CPU runs
    lr: float = 1e-3  # Adam, as in DFAD
    beta1: float = 0.9
    beta2: float = 0.999
    # Generator Adam lr used by the joint (one-stage) update of one_stage/hybrid; null = generator.lr.
    # Simultaneous updates may want their own step size; on the MNIST default a smaller one (2e-4)
    # was worse and a larger one (3e-3) better for every scheme (README, "Tuning the default").
    joint_lr: Optional[float] = None


@dataclass
class PriorsConfig:
    """Weights of optional generator priors (0 = off); generator-only terms, never reversed."""

    bn: float = 0.0  # BatchNorm-statistics matching on the teacher's BN layers (DeepInversion/CMI)
    oh: float = 0.0  # one-hot cross-entropy of the teacher's prediction (DAFL)
    ie: float = 0.0  # information entropy of the batch's mean teacher prediction (DAFL)


@dataclass
class DataConfig:
    dataset: str = "mnist"  # mnist | cifar10 | cifar100 | imagefolder
    root: str = "~/.cache/dfkd/data"
    download: bool = True
    image_size: int = 32
    channels: int = 1
    num_classes: int = 10
    eval_batch_size: int = 1000


@dataclass
class Config:
    recipe: str = "default"
    scheme: str = "one_stage"  # two_stage | one_stage | hybrid
    k: int = 5  # student updates per generator update (two_stage, hybrid)
    loss: str = "l1"  # adversarial loss, see dfkd/losses.py ADVERSARIAL
    max_scale: float = 10.0  # clamp of the per-sample / per-batch generator gradient scale
    priors: PriorsConfig = field(default_factory=PriorsConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    batch_size: int = 256  # global batch of generated images per update
    student_updates: int = 5000  # the budget, counted in student updates
    # Optional budget in training seconds (evaluation excluded): stop at the first cycle after it; null: none
    max_train_seconds: Optional[float] = None
    lr_schedule: str = "cosine"  # cosine | step | constant, over the budget
    lr_milestones: List[float] = field(default_factory=lambda: [0.2, 0.4])  # fractions, for step
    lr_gamma: float = 0.1
    eval_every: int = 250  # student updates between test-set evaluations
    log_every: int = 25
    seed: int = 0
    out_dir: str = "runs"
    run_name: Optional[str] = None  # default: <recipe>-<scheme>-s<seed>
    # no | bf16 | fp16 (fp16: GPU only; one loss scaler shared by student and generator, skipped steps
    # counted). "no" leaves `accelerate launch --mixed_precision` in charge.
    mixed_precision: str = "no"
    compile: bool = False  # torch.compile student, generator and teacher (see README, Scaling, for what it bought)
    channels_last: bool = False  # NHWC memory format for the three networks
    logger: str = "none"  # none | wandb
    wandb_project: str = "dfkd"
    export: bool = False  # at the end: dfkd export RUN_DIR (safetensors, TorchScript, ONNX of the best student)
    checkpoint_every: int = 1000  # student updates between checkpoints (run_dir/checkpoints); 0 = only at the end
    keep_checkpoints: int = 2  # newest complete checkpoints kept
    resume: str = "auto"  # auto: newest complete checkpoint in the run directory | none | PATH to one


def _schema_keys(node, prefix: str = "") -> List[str]:
    keys = []
    for f in fields(node):
        path = prefix + f.name
        default = f.default_factory() if callable(f.default_factory) else f.default
        keys += _schema_keys(default, path + ".") if is_dataclass(default) else [path]
    return keys


ALL_KEYS = _schema_keys(Config())


def _flat_keys(tree, prefix: str = "") -> List[str]:
    out = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out += _flat_keys(value, path + ".") if isinstance(value, dict) and value else [path]
    return out


def _check_keys(keys: List[str], where: str) -> None:
    for key in keys:
        if key not in ALL_KEYS:
            close = difflib.get_close_matches(key, ALL_KEYS, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else "; see dfkd/config.py for the keys"
            raise DfkdError(f"unknown key '{key}' in {where}{hint}")


def available_recipes() -> List[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_config(argv: List[str]) -> Config:
    """Build the config from ``recipe=NAME`` (or a YAML path) and ``key=value`` overrides."""
    overrides = {}
    for arg in argv:
        if "=" not in arg:
            raise DfkdError(f"argument '{arg}' is not key=value (e.g. recipe=default scheme=two_stage)")
        key, value = arg.split("=", 1)
        overrides[key.strip()] = value
    recipe = overrides.pop("recipe", "default")
    path = Path(recipe) if recipe.endswith((".yaml", ".yml")) else RECIPES_DIR / f"{recipe}.yaml"
    if not path.is_file():
        raise DfkdError(f"unknown recipe '{recipe}'; available: {', '.join(available_recipes())}")
    try:
        recipe_cfg = OmegaConf.load(path)
        cli_cfg = OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()])
    except OmegaConfBaseException as err:
        raise DfkdError(f"cannot parse recipe {path}: {err}".splitlines()[0]) from err
    _check_keys(_flat_keys(OmegaConf.to_container(recipe_cfg)), f"recipe {path.name}")
    _check_keys(list(overrides), "the command line")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), recipe_cfg, cli_cfg, {"recipe": path.stem})
        cfg: Config = OmegaConf.to_object(merged)
        if cfg.mixed_precision == "False":  # YAML reads a bare `no` as false: mixed_precision=no means "no"
            cfg.mixed_precision = "no"
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0]
        raise DfkdError(f"bad value for '{key}': {msg}" if key else msg) from err
    validate(cfg)
    return cfg


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise DfkdError(message)


def validate(cfg: Config) -> None:
    """Range and choice checks that the types alone cannot express."""
    from dfkd.losses import ADVERSARIAL  # late import: losses needs torch, config does not

    _require(cfg.scheme in SCHEMES, f"scheme '{cfg.scheme}' is not one of {', '.join(SCHEMES)}")
    _require(cfg.loss in ADVERSARIAL, f"loss '{cfg.loss}' is not one of {', '.join(ADVERSARIAL)}")
    _require(cfg.student.optimizer in ("sgd", "adam"), f"student.optimizer '{cfg.student.optimizer}' is not sgd or adam")
    _require(cfg.k >= 1, f"k must be >= 1, got {cfg.k}")
    _require(cfg.batch_size >= 2, f"batch_size must be >= 2 (BatchNorm needs two samples), got {cfg.batch_size}")
    _require(cfg.student_updates >= 1, f"student_updates must be >= 1, got {cfg.student_updates}")
    _require(cfg.max_train_seconds is None or cfg.max_train_seconds > 0,
             f"max_train_seconds must be > 0 or null, got {cfg.max_train_seconds}")
    for name in ("student.lr", "generator.lr", "lr_gamma", "max_scale"):
        value = OmegaConf.select(OmegaConf.structured(cfg), name)
        _require(value > 0, f"{name} must be > 0, got {value}")
    _require(cfg.generator.joint_lr is None or cfg.generator.joint_lr > 0,
             f"generator.joint_lr must be > 0 or null, got {cfg.generator.joint_lr}")
    for name in ("bn", "oh", "ie"):
        _require(getattr(cfg.priors, name) >= 0, f"priors.{name} must be >= 0")
    _require(cfg.eval_every >= 1 and cfg.log_every >= 1, "eval_every and log_every must be >= 1")
    _require(cfg.lr_schedule in ("cosine", "step", "constant"),
             f"lr_schedule '{cfg.lr_schedule}' is not one of cosine, step, constant")
    _require(cfg.mixed_precision in ("no", "bf16", "fp16"),
             f"mixed_precision '{cfg.mixed_precision}' is not one of no, bf16, fp16")
    _require(cfg.logger in ("none", "wandb"), f"logger '{cfg.logger}' is not one of none, wandb")
    _require(cfg.checkpoint_every >= 0, f"checkpoint_every must be >= 0 (0 = only at the end), got {cfg.checkpoint_every}")
    _require(cfg.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {cfg.keep_checkpoints}")
    _require(cfg.data.image_size % 4 == 0, f"data.image_size must be a multiple of 4, got {cfg.data.image_size}")
    _require(cfg.data.num_classes >= 2, f"data.num_classes must be >= 2, got {cfg.data.num_classes}")
