"""Recipes: a typed schema (dataclasses), YAML files in ``recipes/``, ``key=value`` overrides, clear errors.

Every default lives here. A recipe only states what differs from these defaults.
"""
from __future__ import annotations

import copy
import difflib
import math
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from dfkd.errors import DfkdError

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


def key(default: Any, doc: str, *, logging: bool = False) -> Any:
    """A schema field with its meaning (``dfkd distill --help`` lists it). ``logging=True`` marks a key that
    changes what is logged or where, never the weights: a resumed run may change it."""
    meta = {"doc": doc, "logging": logging}
    if is_dataclass(default) and isinstance(default, type):
        return field(default_factory=default, metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


class Choice(str, Enum):
    """A fixed set of string values: OmegaConf validates them and lists them in its error."""

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


Optimizer = Choice("Optimizer", {"sgd": "sgd", "adam": "adam"})
Dataset = Choice("Dataset", {n: n for n in ("mnist", "digits", "cifar10", "cifar100", "imagefolder")})
Interpolation = Choice("Interpolation", {n: n for n in ("bilinear", "bicubic", "nearest")})
LrSchedule = Choice("LrSchedule", {n: n for n in ("cosine", "step", "constant")})
MixedPrecision = Choice("MixedPrecision", {n: n for n in ("no", "bf16", "fp16")})
Logger = Choice("Logger", {n: n for n in ("none", "wandb")})
GeneratorOutput = Choice("GeneratorOutput", {n: n for n in ("standardized", "pixels")})
INTERPOLATIONS = tuple(i.value for i in Interpolation)


@dataclass
class TeacherConfig:
    name: Optional[str] = key(None, "a timm model name; null: the architecture on the teacher's card")
    checkpoint: Optional[str] = key(None, ".safetensors, or .pt/.pth read with weights_only=True (never unpickled)")
    card: Optional[str] = key(None, "JSON card of the teacher's input (docs/own-teacher.md); null: looked for "
                                    "beside the checkpoint", logging=True)
    kwargs: Dict[str, Any] = key({}, "extra timm constructor keywords, e.g. teacher.kwargs.drop_rate=0")
    pretrained: bool = key(False, "timm's pretrained weights by name (ImageNet teachers)")
    train_if_missing: bool = key(False, "train one with teachers/train.py when the checkpoint is absent",
                                 logging=True)
    train_epochs: int = key(2, "epochs of that teacher training")
    allow_near_chance: bool = key(False, "distil even if the teacher scores near chance on the evaluation data "
                                         "(its input pipeline is then almost surely wrong)", logging=True)


@dataclass
class StudentConfig:
    name: str = key("lenet5_half", "a timm model name; built with the teacher's channels and classes")
    optimizer: Optimizer = key(Optimizer.sgd, "sgd (DFAD) or adam (AdamW)")
    lr: float = key(0.1, "student learning rate (SGD 0.1, as in DFAD)")
    momentum: float = key(0.9, "SGD momentum")
    weight_decay: float = key(5e-4, "weight decay")
    ema: float = key(0.0, "decay per student update of a weight-averaged (EMA) student, evaluated, kept and exported "
                          "in place of the trained one; 0: off")


@dataclass
class GeneratorConfig:
    nz: int = key(256, "latent code size")
    ngf: int = key(64, "generator width: DFAD's 64; 8-16 is a light generator for CPU runs")
    lr: float = key(1e-3, "generator Adam learning rate (DFAD's 1e-3)")
    beta1: float = key(0.9, "Adam beta1")
    beta2: float = key(0.999, "Adam beta2")
    joint_lr: Optional[float] = key(None, "generator lr of the joint one-stage update (one_stage, hybrid); "
                                          "null: generator.lr (docs/results.md, tuning the default)")
    ema: float = key(0.0, "decay per generator update of a weight-averaged (EMA) generator whose images make "
                          "generator.ema_mix of every freshly generated student batch (MAD); 0: off")
    ema_mix: float = key(0.5, "fraction of a generated student batch drawn from the EMA generator (generator.ema > 0)")
    output: GeneratorOutput = key(GeneratorOutput.standardized,
                                  "standardized: tanh then a BatchNorm, every batch at the teacher's normalisation "
                                  "mean/std (DFAD); pixels: sigmoid pixels in [0, 1], normalised as the teacher's "
                                  "inputs are (dfkd/models/generator.py)")


@dataclass
class PriorsConfig:
    """Weights of optional generator priors (0 = off); generator-only terms, never reversed."""

    bn: Optional[float] = key(None, "BatchNorm-statistics matching on the teacher's BN layers (DeepInversion/DFQ); "
                                    "null: BN_PRIOR if the teacher has BatchNorm, else 0")
    oh: float = key(0.0, "one-hot cross-entropy of the teacher's prediction (DAFL)")
    ie: float = key(0.0, "information entropy of the batch-mean teacher prediction: class balance (DAFL)")
    act: float = key(0.0, "activation: minus the mean |teacher pre-logits| (DAFL)")
    cmi: float = key(0.0, "contrastive: teacher pre-logits of each image against a second view of it, the batch "
                          "and the replay pool's past images (CMI); needs pool.size > 0")


@dataclass
class FeaturesConfig:
    """Student loss terms on intermediate features (dfkd/features.py)."""

    at: float = key(0.0, "attention transfer on the last stages of teacher and student, added to the student's "
                         "discrepancy (ZSKT's beta, 250); 0: off")
    at_adversarial: Optional[bool] = key(None, "the generator also maximises the attention term; null: no (ZSKT): "
                                               "one_stage/hybrid's joint step then leaves it out of the student's "
                                               "loss, which gets it in the student-only steps")


@dataclass
class PoolConfig:
    """Replay pool of generated images with their teacher logits (dfkd/pool.py); size 0 = off (DFAD exactly)."""

    size: int = key(0, "pool capacity in images; 0: off, every student step generates its own batch")
    mb: Optional[float] = key(None, "cap the pool at this many MB (float32 images and logits); null: no cap")
    steps: int = key(0, "extra student steps from the pool after each generating (generator or joint) step")
    fresh: float = key(0.0, "fraction of each pool-step batch generated anew (and added to the pool)")


@dataclass
class DataConfig:
    """The evaluation data, and the teacher's input contract: how a real image becomes a teacher input.

    Contract keys left null are derived (dfkd/contract.py), in this order: the teacher's card, the
    checkpoint's first-conv / classifier shapes, the dataset, the architecture's timm pretrained_cfg.
    Generator output, student input, evaluation transforms and exported files all follow them.
    """

    dataset: Dataset = key(Dataset.mnist, "evaluation data; a data.root of class folders on the command line "
                                          "selects imagefolder unless data.dataset is given too")
    root: str = key("~/.cache/dfkd/data", "where the dataset is (imagefolder: one sub-folder per class)",
                    logging=True)
    download: bool = key(True, "torchvision's download when the files are absent", logging=True)
    image_size: Optional[int] = key(None, "teacher input height = width; null: derived")
    channels: Optional[int] = key(None, "teacher input channels (timm in_chans); images are converted to it")
    num_classes: Optional[int] = key(None, "teacher classes; null: derived")
    mean: Optional[List[float]] = key(None, "per-channel mean on 0-1 pixels; null: derived")
    std: Optional[List[float]] = key(None, "per-channel std on 0-1 pixels; null: derived")
    interpolation: Optional[Interpolation] = key(None, "resize interpolation; null: derived")
    crop_pct: Optional[float] = key(None, "resize the short side to image_size / crop_pct, centre-crop image_size")
    classes: Optional[List[str]] = key(None, "ImageFolder folder names in the teacher's class order")
    eval_batch_size: int = key(1000, "evaluation batch", logging=True)


@dataclass
class Config:
    recipe: str = key("default", "recipes/NAME.yaml, or a path to a YAML file")
    method: Optional[str] = key(None, "a method preset of dfkd/methods.py (dfad, dafl, zskt, dfq, cmi, mad): its "
                                      "loss keys over the recipe's; null: the recipe as it is")
    scheme: str = key("one_stage", "update schedule, dfkd/schemes.py: two_stage, one_stage or hybrid")
    k: int = key(5, "student updates per generator update (two_stage, hybrid)")
    loss: str = key("l1", "adversarial loss, dfkd/losses.py ADVERSARIAL")
    adversarial: float = key(1.0, "weight of the adversarial term in the generator's loss; 0: the generator "
                                  "follows its priors only and the student distils on its images (DAFL)")
    max_scale: float = key(10.0, "clamp of the per-sample / per-batch generator gradient scale")
    priors: PriorsConfig = key(PriorsConfig, "generator priors")
    features: FeaturesConfig = key(FeaturesConfig, "student loss terms on intermediate features")
    pool: PoolConfig = key(PoolConfig, "replay pool: student steps on past generated images, teacher outputs cached")
    teacher: TeacherConfig = key(TeacherConfig, "the frozen teacher")
    student: StudentConfig = key(StudentConfig, "the student")
    generator: GeneratorConfig = key(GeneratorConfig, "the generator")
    data: DataConfig = key(DataConfig, "evaluation data and the teacher's input contract")
    batch_size: int = key(256, "global batch of generated images per update")
    student_updates: int = key(5000, "the budget, counted in student updates")
    max_train_seconds: Optional[float] = key(None, "budget in training seconds (evaluation excluded): stop at the "
                                                   "first cycle after it; null: none")
    lr_schedule: LrSchedule = key(LrSchedule.cosine, "learning-rate schedule over the budget")
    lr_milestones: List[float] = key([0.2, 0.4], "fractions of the budget where step multiplies by lr_gamma")
    lr_gamma: float = key(0.1, "factor of the step schedule")
    eval_every: int = key(250, "student updates between test-set evaluations", logging=True)
    log_every: int = key(25, "student updates between metrics.jsonl records", logging=True)
    seed: int = key(0, "seed of weights and latent codes")
    out_dir: str = key("runs", "where run directories go", logging=True)
    run_name: Optional[str] = key(None, "run directory name; null: <recipe>-<scheme label>-s<seed>, e.g. "
                                        "default-hybrid_k5-s0", logging=True)
    mixed_precision: MixedPrecision = key(MixedPrecision.no, "bf16 or fp16 (GPU only; one loss scaler shared by "
                                                             "both optimizers); no: accelerate launch decides")
    compile: bool = key(False, "torch.compile student, generator and teacher (docs/results.md, throughput)")
    channels_last: bool = key(False, "NHWC memory format for the three networks")
    logger: Logger = key(Logger.none, "wandb: log through Accelerate's tracker (offline without WANDB_API_KEY)",
                         logging=True)
    wandb_project: str = key("dfkd", "wandb project", logging=True)
    export: bool = key(False, "at the end: dfkd export RUN_DIR (every format, parity-checked)", logging=True)
    checkpoint_every: int = key(1000, "student updates between checkpoints; 0: only at the end", logging=True)
    keep_checkpoints: int = key(2, "newest complete checkpoints kept", logging=True)
    resume: str = key("auto", "auto: the run directory's newest complete checkpoint; none; or a checkpoint PATH",
                      logging=True)


def schema_fields(node=Config, prefix: str = ""):
    """(dotted key, dataclass field) for every leaf key of the schema."""
    for f in fields(node):
        default = f.default_factory if f.default_factory is not MISSING else None
        if isinstance(default, type) and is_dataclass(default):
            yield from schema_fields(default, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


LOGGING_KEYS = {name for name, f in schema_fields() if f.metadata.get("logging")}


def available_recipes() -> List[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_config(argv: List[str]) -> Config:
    """Build the config from ``recipe=NAME`` (or a YAML path) and ``key=value`` overrides."""
    overrides = {}
    for arg in argv:
        if "=" not in arg:
            raise DfkdError(f"argument '{arg}' is not key=value (e.g. recipe=default scheme=two_stage)")
        name, value = arg.split("=", 1)
        overrides[name.strip()] = value
    recipe = overrides.pop("recipe", "default")
    path = Path(recipe) if recipe.endswith((".yaml", ".yml")) else RECIPES_DIR / f"{recipe}.yaml"
    if not path.is_file():
        raise DfkdError(f"unknown recipe '{recipe}'; available: {', '.join(available_recipes())}")
    try:
        recipe_cfg = OmegaConf.load(path)
        cli_cfg = OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()])
    except OmegaConfBaseException as err:
        raise DfkdError(f"cannot parse recipe {path}: {err}".splitlines()[0]) from err
    # A method preset goes under the layer that names it: a recipe naming its method may adjust the method's
    # keys; a method named on the command line overrides the recipe's (command-line keys still win).
    layers = []
    for layer, where in ((recipe_cfg, f"recipe {path.name}"), (cli_cfg, "the command line")):
        name = OmegaConf.select(layer, "method", default=None)
        if name is not None:
            from dfkd.methods import method_keys

            layers.append((OmegaConf.from_dotlist(method_keys(str(name))), f"method preset {name}"))
        layers.append((layer, where))
    merged = OmegaConf.structured(Config)
    for layer, where in layers:
        if OmegaConf.select(layer, "mixed_precision") is False:  # YAML reads a bare `no` as false
            layer.mixed_precision = "no"
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as err:
            raise DfkdError(one_line(err, where)) from err
    merged.recipe = path.stem
    cfg: Config = OmegaConf.to_object(merged)
    # `data.root=FOLDER` of class folders means "evaluate on this folder", whatever the recipe's dataset
    if "data.root" in overrides and "data.dataset" not in overrides and looks_like_image_folder(cfg.data.root):
        cfg.data.dataset = Dataset.imagefolder
    # the recipe's own teacher may be trained on first use; a checkpoint named on the command line must exist
    if "teacher.checkpoint" in overrides and "teacher.train_if_missing" not in overrides:
        cfg.teacher.train_if_missing = False
    validate(cfg)
    return cfg


def one_line(err: OmegaConfBaseException, where: str, schema=None, help_hint: str = "dfkd distill --help") -> str:
    """OmegaConf's error as dfkd's one line: unknown keys with a did-you-mean (OmegaConf's, else the closest key
    of ``schema``, dfkd distill's by default), bad values by key."""
    full_key, msg = getattr(err, "full_key", None), str(err).splitlines()[0]
    if isinstance(err, ConfigKeyError) and full_key:
        close = re.search(r"Did you mean: '([^']+)'", str(err))
        parent = full_key.rpartition(".")[0]
        if close:
            guess = f"{parent + '.' if parent else ''}{close.group(1)}"
        else:  # OmegaConf suggests only within one level; look across the whole schema too
            keys = [k for k, _ in schema_fields(schema or Config)]
            guess = next(iter(difflib.get_close_matches(full_key, keys, n=1)), None)
        hint = f"did you mean '{guess}'?" if guess else f"{help_hint} lists the keys"
        return f"unknown key '{full_key}' in {where}; {hint}"
    return f"bad value for '{full_key}' in {where}: {msg}" if full_key else msg


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise DfkdError(message)


def validate(cfg: Config) -> None:
    """Range checks the types alone cannot express; scheme and loss names come from their tables."""
    from dfkd.losses import ADVERSARIAL  # late imports: losses and schemes need torch, config does not
    from dfkd.schemes import SCHEMES

    _require(cfg.scheme in SCHEMES, f"scheme '{cfg.scheme}' is not one of {', '.join(SCHEMES)}")
    _require(cfg.loss in ADVERSARIAL, f"loss '{cfg.loss}' is not one of {', '.join(ADVERSARIAL)}")
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
    for name in ("bn", "oh", "ie", "act", "cmi"):
        _require(getattr(cfg.priors, name) is None or getattr(cfg.priors, name) >= 0,
                 f"priors.{name} must be >= 0")
    _require(cfg.adversarial >= 0, f"adversarial must be >= 0, got {cfg.adversarial}")
    _require(cfg.features.at >= 0, f"features.at must be >= 0, got {cfg.features.at}")
    _require(not (cfg.features.at and not cfg.features.at_adversarial and cfg.scheme == "one_stage"
                  and not (cfg.pool.size and cfg.pool.steps)),
             "features.at would never reach the student: one_stage's joint step leaves the attention term out "
             "(the generator maximises the discrepancy alone, as ZSKT's) and this run has no student-only step; "
             "use hybrid, pool.steps > 0, or features.at_adversarial=true")
    _require(not (cfg.priors.cmi and cfg.pool.size == 0),
             "priors.cmi contrasts with past images kept in the replay pool: set pool.size > 0")
    _require(0 <= cfg.generator.ema < 1, f"generator.ema must be in [0, 1) (0: off), got {cfg.generator.ema}")
    _require(0 < cfg.generator.ema_mix < 1, f"generator.ema_mix must be in (0, 1), got {cfg.generator.ema_mix}")
    _require(not cfg.generator.ema or (cfg.pool.fresh > 0 if cfg.pool.size else cfg.scheme != "one_stage"),
             "generator.ema mixes its images into freshly generated student batches, and this run has none: "
             "one_stage without a pool has no student-only steps, and with a pool they draw from it; use "
             "two_stage/hybrid with pool.size=0, or pool.fresh > 0")
    _require(0 <= cfg.student.ema < 1, f"student.ema must be in [0, 1) (0: off), got {cfg.student.ema}")
    _require(cfg.eval_every >= 1 and cfg.log_every >= 1, "eval_every and log_every must be >= 1")
    _require(cfg.pool.size >= 0 and cfg.pool.steps >= 0, "pool.size and pool.steps must be >= 0")
    _require(0 <= cfg.pool.fresh <= 1, f"pool.fresh must be in [0, 1], got {cfg.pool.fresh}")
    _require(cfg.pool.mb is None or cfg.pool.mb > 0, f"pool.mb must be > 0 or null, got {cfg.pool.mb}")
    _require(not (cfg.pool.size and cfg.scheme == "one_stage" and cfg.pool.steps == 0),
             "scheme=one_stage has no student-only steps to draw from the pool: set pool.steps >= 1 (or use hybrid)")
    _require(cfg.checkpoint_every >= 0, f"checkpoint_every must be >= 0 (0 = only at the end), got {cfg.checkpoint_every}")
    _require(cfg.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {cfg.keep_checkpoints}")
    _require(cfg.data.image_size is None or (cfg.data.image_size >= 4 and cfg.data.image_size % 4 == 0),
             f"data.image_size must be a multiple of 4, got {cfg.data.image_size}")
    _require(cfg.data.num_classes is None or cfg.data.num_classes >= 2,
             f"data.num_classes must be >= 2, got {cfg.data.num_classes}")
    _require(cfg.data.channels is None or cfg.data.channels >= 1, f"data.channels must be >= 1, got {cfg.data.channels}")
    _require(cfg.data.crop_pct is None or 0 < cfg.data.crop_pct <= 1,
             f"data.crop_pct must be in (0, 1], got {cfg.data.crop_pct}")
    _require(all(s > 0 for s in cfg.data.std or []), f"data.std must be > 0, got {cfg.data.std}")
    for name, value in _floats(OmegaConf.to_container(OmegaConf.structured(cfg))):
        _require(math.isfinite(value), f"{name} must be a finite number, got {value}")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _floats(tree, prefix: str = ""):
    """(key, value) for every float in a nested container, list items included."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in items:
        path = f"{prefix}{key}" if isinstance(tree, dict) else f"{prefix[:-1]}[{key}]"
        if isinstance(value, (dict, list)):
            yield from _floats(value, path + ".")
        elif isinstance(value, float):
            yield path, value


def looks_like_image_folder(root: str) -> bool:
    """True if ``root`` holds class sub-folders with image files (and is not a torchvision dataset cache)."""
    path = Path(root).expanduser()
    if not path.is_dir() or any((path / d).exists() for d in ("MNIST", "cifar-10-batches-py", "cifar-100-python")):
        return False
    for sub in (p for p in path.iterdir() if p.is_dir()):
        if any(f.suffix.lower() in IMAGE_SUFFIXES for f in sub.iterdir()):
            return True
    return False
