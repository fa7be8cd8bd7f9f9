"""The checks before anything trains: teacher, student and generator agree; the teacher reads its input right;
the replay pool keeps what the run makes. Each failure is one line naming the keys that fix it."""
from __future__ import annotations

from typing import List, Optional

import timm
import torch
from torch import nn

from dfkd.accuracy import perplexity
from dfkd.contract import Contract, teacher_label
from dfkd.errors import DfkdError
from dfkd.losses import ADVERSARIAL
from dfkd.models import evaluating
from dfkd.priors import batchnorm_layers
from dfkd.schema import Config
from dfkd.schemes import cycle_updates


def check_models(cfg: Config, teacher: nn.Module, student: nn.Module, generator: nn.Module,
                 contract: Optional[Contract] = None) -> None:
    """Teacher, student and generator must agree on classes and image shape before anything trains."""
    check_student_input(cfg, student)
    source = (contract.sources if contract else {}).get("image_size")
    origin = f", the size from {source}" if source else ""
    z = torch.randn(2, cfg.generator.nz)
    with torch.no_grad():
        with evaluating(generator):
            x = generator(z)
        outputs = []
        for role, name, model in (("teacher", teacher_label(cfg.teacher), teacher),
                                  ("student", cfg.student.name, student)):
            try:
                with evaluating(model):
                    outputs.append(model(x))
            except (RuntimeError, AssertionError) as err:  # timm asserts fixed input sizes
                raise DfkdError(f"{role} {name} cannot take generated images of shape {tuple(x.shape[1:])} "
                                f"(data.image_size={cfg.data.image_size}, data.channels={cfg.data.channels}"
                                f"{origin}): {str(err).splitlines()[0][:120]}; set data.image_size/data.channels "
                                f"to the teacher's input, or pick a {role} built for it") from err
        t, s = outputs
    if t.shape[1] != s.shape[1] or t.shape[1] != cfg.data.num_classes:
        raise DfkdError(f"class counts differ: teacher {teacher_label(cfg.teacher)} has {t.shape[1]}, student "
                        f"{cfg.student.name} {s.shape[1]}, data.num_classes={cfg.data.num_classes}")
    adv = ADVERSARIAL[cfg.loss]
    if adv.mode == "sample" and cfg.scheme != "two_stage":
        mixing = [n for n, _ in batchnorm_layers(student)]
        if mixing:
            raise DfkdError(f"loss={cfg.loss} rescales the generator gradient per sample, which one-stage can do "
                            f"exactly only if the student treats samples independently; {cfg.student.name} has "
                            f"train-mode BatchNorm ({mixing[0]}): use loss=l1_log (per batch) or scheme=two_stage")


INPUT_ERRORS = (RuntimeError, AssertionError, ValueError)  # shape errors of torch; timm asserts fixed input sizes


def input_error(model: nn.Module, shape: tuple, device: Optional[torch.device] = None) -> Optional[str]:
    """Why ``model`` fails on a batch of ``shape`` ("TYPE: first line"), or None when it takes it. One forward of
    zeros (no draw from the seeded RNG) without gradients, in eval mode so BatchNorm takes 2 images; the mode
    is restored after."""
    try:
        with torch.no_grad(), evaluating(model):
            model(torch.zeros(shape, device=device))
    except INPUT_ERRORS as err:
        return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}"
    return None


def zoo_students_for(channels: int, size: int, num_classes: int) -> List[str]:
    """The networks dfkd's zoo registers in timm (dfkd/models) that take ``channels`` x ``size`` x ``size``
    input, built on the meta device: the shapes are checked, nothing is allocated or computed."""
    names = sorted(n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith("dfkd."))
    fits = []
    for name in names:
        with torch.device("meta"):
            model = timm.create_model(name, num_classes=num_classes, in_chans=channels)
        if input_error(model, (2, channels, size, size), torch.device("meta")) is None:
            fits.append(name)
    return fits


def check_student_input(cfg: Config, student: nn.Module) -> None:
    """The student must take the teacher's input (the resolved data.channels x image_size): else one line naming
    the zoo's students that do, before anything trains."""
    d = cfg.data
    shape = (2, d.channels, d.image_size, d.image_size)
    device = next(student.parameters(), torch.zeros(0)).device
    failure = input_error(student, shape, device)
    if failure is not None:
        fits = zoo_students_for(d.channels, d.image_size, d.num_classes)
        raise DfkdError(f"student {cfg.student.name} cannot take {d.channels}x{d.image_size}x{d.image_size} input "
                        f"({failure}); students that fit: {', '.join(fits) or 'none of the zoo (dfkd/models)'}")


def check_teacher(cfg: Config, teacher_acc: float, contract: Contract, print_fn,
                  confusion: Optional[torch.Tensor] = None) -> Optional[str]:
    """No silent wrong numbers: a teacher near chance on real data means a wrong input pipeline, not a bad teacher
    (an error). One that scores far from its card's accuracy, or, without one, far below a trained model
    (``weak_signs``), is probably fed wrongly too (a warning). Returns the warning printed, if any: summary.json
    keeps it. ``confusion``: the teacher's label x prediction counts on the same images."""
    chance = 100.0 / cfg.data.num_classes
    where = f"{cfg.data.dataset} {cfg.data.root if cfg.data.dataset == 'imagefolder' else 'test split'}"
    card = (f"or correct its card {contract.card.name}" if contract.card
            else "or give the teacher a card (docs/own-teacher.md)")
    if teacher_acc < min(2 * chance, (100 + chance) / 2) and not cfg.teacher.allow_near_chance:
        raise DfkdError(
            f"teacher {teacher_label(cfg.teacher)} scores {teacher_acc:.2f}% on {where}, near chance ({chance:.3g}%): "
            f"its input "
            f"pipeline is probably wrong. Check {pipeline_keys(cfg)}; {card}; "
            f"teacher.allow_near_chance=true distils anyway")
    warning = None
    if contract.card_accuracy is not None:
        if abs(contract.card_accuracy - teacher_acc) > 1.0:
            warning = (f"teacher {teacher_label(cfg.teacher)} scores {teacher_acc:.2f}% here, its card "
                       f"{contract.card.name} "
                       f"says {contract.card_accuracy:.2f}%: if both are on the same images, the input pipeline "
                       f"differs (data.mean/std, image_size, crop_pct, interpolation, channels, classes)")
    else:
        signs = weak_signs(teacher_acc, chance, confusion)
        if signs:
            warning = (f"teacher {teacher_label(cfg.teacher)} scores {teacher_acc:.2f}% on {where}: "
                       f"{', and '.join(signs)}. "
                       f"Its input pipeline is probably wrong: check {pipeline_keys(cfg)}; {card}. Distilling "
                       f"anyway; ignore this if the teacher really is this weak")
    if warning:
        print_fn(f"[dfkd] warning: {warning}")
    return warning


COLLAPSED = 2.5  # perplexity of the teacher's predicted classes under which they sit on one or two classes


def check_unlabelled(cfg: Config, predicted: torch.Tensor, print_fn) -> Optional[str]:
    """Without labels, the near-chance check's stand-in: a teacher whose predictions on a folder of real images
    collapse onto one or two classes (``predicted``: its predicted-class counts) is probably fed wrongly. A warning,
    since the folder may really hold so few classes; returns it, if any (summary.json keeps it)."""
    spread = perplexity(predicted)
    if cfg.data.num_classes <= 2 or spread >= COLLAPSED:
        return None
    warning = (f"teacher {teacher_label(cfg.teacher)}'s predictions on the {int(predicted.sum())} images of "
               f"{cfg.data.root} collapse onto one or two classes (perplexity {spread:.1f} of its predicted classes): "
               f"its input pipeline is probably wrong. Check {pipeline_keys(cfg)}. Distilling anyway; ignore this if "
               f"the folder really holds one or two classes")
    print_fn(f"[dfkd] warning: {warning}")
    return warning


def check_no_data(cfg: Config, contract: Contract, print_fn) -> None:
    """``data.dataset=none``: the contract must be complete from keys, the card or the checkpoint alone, and the
    user is told, once, that no real image could check it."""
    d = cfg.data
    missing = [f"data.{k}" for k in ("channels", "image_size", "num_classes", "mean", "std", "interpolation",
                                     "crop_pct") if getattr(d, k) is None]
    if missing:
        raise DfkdError(f"data.dataset=none: the teacher's input contract is incomplete ({', '.join(missing)} unknown) "
                        f"and there are no real images to derive it from; set {missing[0]}=VALUE or give the teacher "
                        f"a card (docs/own-teacher.md)")
    print_fn(f"[dfkd] data.dataset=none: the input contract could not be checked against real images; it is "
             f"{contract.describe(cfg)}")


def weak_signs(teacher_acc: float, chance: float, confusion: Optional[torch.Tensor]) -> List[str]:
    """Why a teacher with no stated accuracy looks wrongly fed: it scores below the midpoint between chance and
    100 % (a trained classifier's least), and/or its predictions collapse onto few classes (the perplexity of the
    predicted-class histogram under half that of the true classes: a subset of classes is no collapse)."""
    signs = []
    midpoint = (100 + chance) / 2
    if teacher_acc < midpoint:
        signs.append(f"below {midpoint:.3g}% (midway between chance, {chance:.3g}%, and 100%)")
    if confusion is not None:
        predicted, labels = perplexity(confusion.sum(0)), perplexity(confusion.sum(1))
        if predicted < labels / 2:
            signs.append(f"its predictions collapse onto few classes (perplexity {predicted:.1f} of the predicted "
                         f"classes, {labels:.1f} of the true ones)")
    return signs


def pipeline_keys(cfg: Config) -> str:
    """The keys of the teacher's input pipeline, with their values: what to check when it scores too low."""
    d = cfg.data
    return (f"data.mean/data.std (now {list(map(float, d.mean))}/{list(map(float, d.std))}), resize/crop "
            f"(data.image_size={d.image_size}, data.crop_pct={d.crop_pct}, data.interpolation={d.interpolation}), "
            f"data.channels={d.channels}, and the class order (data.classes)")


def warn_pool_evicts(cfg: Config, capacity: int, per_cycle: int, print_fn) -> None:
    """Say so before training when the run will make more images than its pool keeps: past that point the
    oldest leave, and on the default pair students then drift down (docs/students.md)."""
    made = -(-cfg.student_updates // cycle_updates(cfg)) * per_cycle
    if made > capacity:
        print_fn(f"[dfkd] warning: this run makes about {made:,} images and its replay pool keeps {capacity:,}: "
                 f"from about update {capacity // per_cycle * cycle_updates(cfg):,} on the oldest leave and the "
                 f"student may drift (docs/students.md); pool.size={made} keeps them all")
