"""Recipes: YAML files in ``recipes/`` over the schema (dfkd/schema.py), ``key=value`` overrides, validation, clear errors.

A recipe only states what differs from the schema's defaults.
"""
from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Dict, List, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from dfkd.errors import DfkdError
from dfkd.schema import INTERPOLATIONS, Config, Dataset, schema_fields

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


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
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise DfkdError(f"cannot parse recipe {path}: {err}".splitlines()[0]) from err
    cli_cfg = parse_overrides([f"{name}={value}" for name, value in overrides.items()])
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
    elif "data.root" in overrides and "data.dataset" not in overrides and holds_images(cfg.data.root):
        cfg.data.dataset = Dataset.unlabelled  # a flat folder of images: no labels
    # the recipe's own teacher may be trained on first use; a checkpoint named on the command line must exist
    if "teacher.checkpoint" in overrides and "teacher.train_if_missing" not in overrides:
        cfg.teacher.train_if_missing = False
    if "teacher.checkpoint" in overrides and "teacher.name" not in overrides:
        own_teacher(cfg)
    validate(cfg)
    return cfg


def parse_overrides(args: List[str]):
    """``key=value`` arguments as one OmegaConf tree, parsed one at a time (as ``from_dotlist`` does) so that an
    error names its argument; values are read as YAML."""
    tree = OmegaConf.create()
    for arg in args:
        try:
            tree.merge_with_dotlist([arg])
        except yaml.YAMLError as err:  # "[0.1" leaves its bracket open
            raise DfkdError(f"argument '{arg}' does not parse: brackets and quotes must balance "
                            f"(YAML: {getattr(err, 'problem', None) or type(err).__name__}); quote the whole argument in "
                            f"the shell, e.g. \"data.mean=[0.5, 0.5, 0.5]\"") from err
        except OmegaConfBaseException as err:
            raise DfkdError(f"cannot parse argument '{arg}': {err}".splitlines()[0]) from err
    return tree


def own_teacher(cfg: Config) -> None:
    """A checkpoint named without an architecture: the checkpoint's own architecture wins over the recipe's teacher,
    where it states one (a program file holds it; a card beside the weights names it, with its constructor keywords)."""
    from dfkd.card import find_card, read_card  # late: keep recipe errors free of the file reads
    from dfkd.sources import is_program_file

    if is_program_file(cfg.teacher.checkpoint):
        cfg.teacher.name, cfg.teacher.kwargs = None, {}
        return
    card = find_card(cfg.teacher) if Path(cfg.teacher.checkpoint).expanduser().is_file() else None
    if card is not None and read_card(card).get("architecture"):
        cfg.teacher.name, cfg.teacher.kwargs = None, {}


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
    """Range checks the types alone cannot express; scheme, loss and prior names come from their tables."""
    from dfkd.losses import ADVERSARIAL  # late imports: keep `dfkd distill --help` and typos free of the step code
    from dfkd.schemes import SCHEMES

    _require(cfg.scheme in SCHEMES, f"scheme '{cfg.scheme}' is not one of {', '.join(SCHEMES)}")
    _require(cfg.loss in ADVERSARIAL, f"loss '{cfg.loss}' is not one of {', '.join(ADVERSARIAL)}")
    _require(cfg.k >= 1, f"k must be >= 1, got {cfg.k}")
    _require(0 <= cfg.seed < 2**32, f"seed must be in [0, 2**32 - 1] (numpy's seed range), got {cfg.seed}")
    _require(cfg.batch_size >= 2, f"batch_size must be >= 2 (BatchNorm needs two samples), got {cfg.batch_size}")
    _require(cfg.student_updates >= 1, f"student_updates must be >= 1, got {cfg.student_updates}")
    _require(cfg.max_train_seconds is None or cfg.max_train_seconds > 0,
             f"max_train_seconds must be > 0 or null, got {cfg.max_train_seconds}")
    for name in ("student.lr", "generator.lr", "lr_gamma", "max_scale"):
        value = OmegaConf.select(OmegaConf.structured(cfg), name)
        _require(value > 0, f"{name} must be > 0, got {value}")
    _require(cfg.generator.joint_lr is None or cfg.generator.joint_lr > 0,
             f"generator.joint_lr must be > 0 or null, got {cfg.generator.joint_lr}")
    _require(cfg.eval_every >= 1 and cfg.log_every >= 1, "eval_every and log_every must be >= 1")
    _require(cfg.checkpoint_every >= 0, f"checkpoint_every must be >= 0 (0 = only at the end), got {cfg.checkpoint_every}")
    _require(cfg.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {cfg.keep_checkpoints}")
    _require(cfg.data.fidelity_images >= 16 and cfg.data.fidelity_steps >= 0,
             f"data.fidelity_images must be >= 16 and data.fidelity_steps >= 0, got {cfg.data.fidelity_images} and "
             f"{cfg.data.fidelity_steps}")
    _check_terms(cfg)
    _check_pool_and_averages(cfg)
    check_contract(cfg.data)
    for name, value in _floats(OmegaConf.to_container(OmegaConf.structured(cfg))):
        _require(math.isfinite(value), f"{name} must be a finite number, got {value}")


def _check_terms(cfg: Config) -> None:
    """The loss terms: weights >= 0, and what each prior reads available to the run (``PRIORS``)."""
    from dfkd.priors import PRIORS, READS

    for name, prior in PRIORS.items():
        value = getattr(cfg.priors, name)
        _require((value is None and prior.default is None) or (value is not None and value >= 0),
                 f"priors.{name} must be >= 0" + (" or null" if prior.default is None else "") + f", got {value}")
        _require(not (value and "pool" in prior.reads and cfg.pool.size == 0),
                 f"priors.{name} reads {READS['pool']}: set pool.size > 0")
    _require(cfg.adversarial >= 0, f"adversarial must be >= 0, got {cfg.adversarial}")
    _require(cfg.features.at >= 0, f"features.at must be >= 0, got {cfg.features.at}")
    _require(not (cfg.features.at and not cfg.features.at_adversarial and cfg.scheme == "one_stage"
                  and not (cfg.pool.size and cfg.pool.steps)),
             "features.at would never reach the student: one_stage's joint step leaves the attention term out "
             "(the generator maximises the discrepancy alone, as ZSKT's) and this run has no student-only step; "
             "use hybrid, pool.steps > 0, or features.at_adversarial=true")


def _check_pool_and_averages(cfg: Config) -> None:
    _require(0 <= cfg.generator.ema < 1, f"generator.ema must be in [0, 1) (0: off), got {cfg.generator.ema}")
    _require(0 < cfg.generator.ema_mix < 1, f"generator.ema_mix must be in (0, 1), got {cfg.generator.ema_mix}")
    _require(not cfg.generator.ema or (cfg.pool.fresh > 0 if cfg.pool.size else cfg.scheme != "one_stage"),
             "generator.ema mixes its images into freshly generated student batches, and this run has none: "
             "one_stage without a pool has no student-only steps, and with a pool they draw from it; use "
             "two_stage/hybrid with pool.size=0, or pool.fresh > 0")
    student_only_steps = cfg.scheme != "real_data" and (cfg.scheme == "two_stage" or (cfg.scheme == "hybrid" and cfg.k > 1)
                                                        or (cfg.pool.size > 0 and cfg.pool.steps > 0))
    _require(cfg.student.augment == "none" or student_only_steps,
             f"student.augment jitters the images of the student-only steps, and scheme={cfg.scheme} here has none "
             "(one_stage and hybrid k=1 without a replay pool step the student only jointly; real_data trains on "
             "real images); use two_stage, hybrid with k > 1, or pool.size and pool.steps > 0")
    _require(0 <= cfg.student.ema < 1, f"student.ema must be in [0, 1) (0: off), got {cfg.student.ema}")
    _require(cfg.pool.size >= 0 and cfg.pool.steps >= 0, "pool.size and pool.steps must be >= 0")
    _require(0 <= cfg.pool.fresh <= 1, f"pool.fresh must be in [0, 1], got {cfg.pool.fresh}")
    _require(cfg.pool.mb is None or cfg.pool.mb > 0, f"pool.mb must be > 0 or null, got {cfg.pool.mb}")
    _require(not (cfg.pool.size and cfg.scheme == "one_stage" and cfg.pool.steps == 0),
             "scheme=one_stage has no student-only steps to draw from the pool: set pool.steps >= 1 (or use hybrid)")


def check_contract(d, sources: Optional[Dict[str, str]] = None) -> None:
    """Ranges of the input-contract keys ``data.*``, whether the user gave them or they were derived: ``sources``
    names where a derived value came from (a card, the checkpoint, timm), so the message points at it."""
    sources = sources or {}

    def where(name: str) -> str:
        return f" (from {sources[name]})" if name in sources else ""

    _require(d.image_size is None or (d.image_size >= 4 and d.image_size % 4 == 0),
             f"data.image_size must be a multiple of 4 (the generator upsamples twice by 2), got {d.image_size}"
             f"{where('image_size')}")
    _require(d.num_classes is None or d.num_classes >= 2,
             f"data.num_classes must be >= 2, got {d.num_classes}{where('num_classes')}")
    _require(d.channels is None or d.channels >= 1, f"data.channels must be >= 1, got {d.channels}{where('channels')}")
    _require(d.crop_pct is None or 0 < d.crop_pct <= 1,
             f"data.crop_pct must be in (0, 1], got {d.crop_pct}{where('crop_pct')}")
    _require(all(s > 0 for s in d.std or []), f"data.std must be > 0, got {d.std}{where('std')}")
    _require(d.interpolation is None or str(d.interpolation) in INTERPOLATIONS,
             f"data.interpolation '{d.interpolation}' is not one of {', '.join(INTERPOLATIONS)}"
             f"{where('interpolation')}")
    _require(not (d.classes and d.num_classes and len(d.classes) > d.num_classes),
             f"data.classes names {len(d.classes or [])} classes, the teacher has {d.num_classes}{where('classes')}")
    for name in ("mean", "std"):
        values = getattr(d, name) or []
        _require(all(math.isfinite(v) for v in values), f"data.{name} must be finite numbers, got {values}{where(name)}")


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


def holds_images(root: str) -> bool:
    """True if ``root`` is a folder with image files directly inside it (a flat, unlabelled folder)."""
    path = Path(root).expanduser()
    return path.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in path.iterdir() if f.is_file())
