"""The schema of every run: typed dataclasses (OmegaConf structured configs), each key with its default and meaning.

Every default of the schema lives here; ``recipes/default.yaml`` changes some of them for the offline default run,
and ``dfkd distill --help`` shows the values a bare run uses, with where each comes from.
"""
from __future__ import annotations

import copy
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, make_dataclass
from enum import Enum
from typing import Any, Dict, List, Optional

from dfkd.priors import PRIORS


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
Dataset = Choice("Dataset", {n: n for n in ("mnist", "fashion_mnist", "digits", "cifar10", "cifar100", "imagefolder",
                                            "given", "unlabelled", "none")})
Interpolation = Choice("Interpolation", {n: n for n in ("bilinear", "bicubic", "nearest")})
LrSchedule = Choice("LrSchedule", {n: n for n in ("cosine", "step", "constant")})
MixedPrecision = Choice("MixedPrecision", {n: n for n in ("no", "bf16", "fp16")})
Logger = Choice("Logger", {n: n for n in ("none", "wandb")})
Augment = Choice("Augment", {n: n for n in ("none", "intensity")})
GeneratorOutput = Choice("GeneratorOutput", {n: n for n in ("standardized", "pixels")})
INTERPOLATIONS = tuple(i.value for i in Interpolation)


@dataclass
class TeacherConfig:
    name: Optional[str] = key(None, "a timm model name, or package.module:callable (a model of your code, called "
                                    "with teacher.kwargs); null: the architecture on the teacher's card, or none "
                                    "when teacher.checkpoint is a program file")
    checkpoint: Optional[str] = key(None, "weights: .safetensors, or .pt/.pth read with weights_only=True (never "
                                          "unpickled); or a self-contained program: torch.export .pt2 or TorchScript")
    card: Optional[str] = key(None, "JSON card of the teacher's input (docs/own-teacher.md); null: looked for "
                                    "beside the checkpoint", logging=True)
    kwargs: Dict[str, Any] = key({}, "extra constructor keywords, e.g. teacher.kwargs.drop_rate=0")
    pretrained: bool = key(False, "timm's pretrained weights by name (ImageNet teachers)")
    train_if_missing: bool = key(False, "train one with teachers/train.py when the checkpoint is absent",
                                 logging=True)
    train_epochs: int = key(2, "epochs of that teacher training")
    allow_near_chance: bool = key(False, "distil even if the teacher scores near chance on the evaluation data "
                                         "(its input pipeline is then almost surely wrong)", logging=True)


@dataclass
class StudentConfig:
    name: str = key("lenet5_half", "a timm model name, built with the teacher's channels and classes; or "
                                   "package.module:callable, called with student.kwargs")
    kwargs: Dict[str, Any] = key({}, "extra constructor keywords, e.g. student.kwargs.drop_rate=0")
    optimizer: Optimizer = key(Optimizer.sgd, "sgd (DFAD) or adam (AdamW)")
    lr: float = key(0.1, "student learning rate (SGD 0.1, as in DFAD)")
    momentum: float = key(0.9, "SGD momentum")
    weight_decay: float = key(5e-4, "weight decay")
    ema: float = key(0.0, "decay per student update of a weight-averaged (EMA) student, evaluated, kept and exported "
                          "in place of the trained one; 0: off")
    augment: Augment = key(Augment.none, "intensity: the student's generated images (fresh and replayed) get a random "
                                         "brightness and contrast, pixels p -> a*p + b (a in [0.25, 1], b in [0, 1-a]), "
                                         "and the teacher labels them anew: for teachers that normalise each image "
                                         "(GroupNorm), docs/students.md; none: off")


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


def priors_schema() -> type:
    """``priors.*``: one weight per generator prior of ``PRIORS`` (dfkd/priors.py), 0 = off; null where the prior
    decides its weight from the teacher."""
    return make_dataclass("PriorsConfig", [
        (name, Optional[float] if prior.default is None else float, key(prior.default, prior.doc))
        for name, prior in PRIORS.items()])


PriorsConfig = priors_schema()


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
                                          "selects imagefolder unless data.dataset is given too; given: a torch "
                                          "Dataset passed to dfkd.distill(eval_data=...); unlabelled: a flat "
                                          "folder of images (data.root), measured by agreement with the teacher; "
                                          "none: no real images, fidelity on generated ones only "
                                          "(docs/evaluation.md)")
    root: str = key("~/.cache/dfkd/data", "where the dataset is (imagefolder: one sub-folder per class; "
                                          "unlabelled: the images themselves)",
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
    fidelity_images: int = key(2000, "held-out generated images fidelity is measured on (dfkd/fidelity.py; fewer for "
                                     "large inputs: at most 64 MB)")
    fidelity_steps: int = key(200, "training steps of the generator that makes them (a few seconds for LeNet-5; "
                                   "minutes for an ImageNet teacher on a CPU: lower it there)")


@dataclass
class Config:
    recipe: str = key("default", "recipes/NAME.yaml, or a path to a YAML file")
    method: Optional[str] = key(None, "a method preset of dfkd/methods.py (dfad, dafl, zskt, dfq, cmi, mad): its "
                                      "loss keys over the recipe's; null: the recipe as it is")
    scheme: str = key("one_stage", "update schedule, dfkd/schemes.py: two_stage, one_stage, hybrid; real_data: KD on the "
                                   "real training split, not data-free (the upper bound)")
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
    export: bool = key(False, "at the end: dfkd export RUN_DIR (every format, int8 included, checked)", logging=True)
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
