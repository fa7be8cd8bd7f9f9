"""``dfkd compare``: one recipe under several schemes and seeds, side by side, timed honestly.

    dfkd compare recipe=default schemes=[two_stage_k5,two_stage_k1,one_stage,hybrid_k5] seeds=3 budget=updates:2000
    dfkd compare "schemes=[hybrid_k5,hybrid_k5+pool.size=20000+pool.steps=2]" budget=time:600
    dfkd compare "schemes=[DFAD=two_stage_k5+pool.size=0+student.ema=0,default=hybrid_k5]" seeds=3
    dfkd compare "methods=[dfad,dafl,zskt,cmi+pool.size=50000]" schemes=[two_stage_k5,hybrid_k5] seeds=3

A scheme is named as in ``SCHEMES`` (dfkd/schemes.py), with its k unless it ignores k: one_stage,
two_stage_k5, hybrid_k5. An entry may add ``+key=value`` recipe overrides of its own, to compare
variants of one scheme (values without ``+`` or ``,``), and may start with ``LABEL=``: the name its
row, plot line and run folders carry instead of the entry as written (letters, digits, '.', '_', '-').
``methods=[...]`` runs each method preset (dfkd/methods.py, with ``+key=value`` overrides and a label
of its own) under every scheme: the entries become ``<scheme>+method=<method>``, all named
``<method>-<scheme>`` (labels, else bare names) when a method or a scheme is labelled. Every run
shares the models, data, budget (student updates, or training seconds with ``budget=time:S``) and
evaluation schedule; only the scheme (and its overrides) and the seed change. Other ``key=value``
arguments are recipe overrides, as for ``dfkd distill``. Writes into ``out``: results.md, results.csv
(one row per entry), accuracy_vs_time.png (+ .json: the plotted lines), runs.jsonl.gz (one JSON line
per run: entry, seed, folder, config, summary and every metrics record; the file to keep) and
runs/<folder>-s<seed>/ (each run's files and checkpoints). The folder is the label, else the entry with
characters outside A-Z a-z 0-9 . _ - as _, cut short with a hash of its overrides past 50 characters.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dfkd.config import load_config, one_line, parse_overrides
from dfkd.errors import DfkdError, one_line_errors
from dfkd.machine import machine_description, pick_threads
from dfkd.methods import method_keys
from dfkd.results import measured, plot_accuracy_vs_time, run_record, summarise, write_markdown, write_runs
from dfkd.schema import Config
from dfkd.schemes import cycle_updates, parse_scheme, scheme_label

SET_BY_COMPARE = ("scheme", "k", "run_name", "out_dir")
SET_PER_RUN = (*SET_BY_COMPARE, "seed")  # an entry's own overrides may not set these
NAME_MAX = 50  # characters of a label or run folder (then -s<seed>): paths stay short on every file system
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class CompareConfig:
    schemes: List[str] = field(default_factory=lambda: ["two_stage_k5", "two_stage_k1", "one_stage", "hybrid_k5"])
    methods: List[str] = field(default_factory=list)  # presets of dfkd/methods.py, each run under every scheme
    seeds: int = 3  # seeds seed, seed+1, ... (seed from the recipe, 0 by default)
    budget: Optional[str] = None  # updates:N | time:SECONDS; null: the recipe's student_updates
    warmup: int = 20  # student updates of one discarded run per scheme before the measured runs; 0: none
    out: Optional[str] = None  # results directory; null: <out_dir>/compare-<recipe>-<date>-<time>


def split_label(entry: str) -> Tuple[Optional[str], str]:
    """``DFAD=two_stage_k5+pool.size=0`` -> ("DFAD", "two_stage_k5+pool.size=0"); no label -> (None, entry)."""
    if "=" not in entry.split("+", 1)[0]:
        return None, entry
    label, _, rest = entry.partition("=")
    if not LABEL.fullmatch(label) or len(label) > NAME_MAX:
        raise DfkdError(f"label '{label}' of entry '{entry}' must be 1-{NAME_MAX} letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit (e.g. DFAD=two_stage_k5+pool.size=0)")
    return label, rest


def entry_name(entry: str) -> str:
    """What the table, the plot and the run order call an entry: its label, else the entry as written."""
    label, rest = split_label(entry)
    return label or rest


def method_entries(schemes: List[str], methods: List[str]) -> List[str]:
    """Every methods entry under every schemes entry: ``<scheme>+method=<method>``; when any of them is labelled,
    every entry is named ``<method>-<scheme>``, each part by its label, else by its bare name."""
    schemes, methods = [split_label(e) for e in schemes], [split_label(e) for e in methods]
    named = any(label for label, _ in schemes + methods)
    return [(f"{m_label or method.split('+')[0]}-{s_label or scheme.split('+')[0]}=" if named else "")
            + f"{scheme}+method={method}" for m_label, method in methods for s_label, scheme in schemes]


def parse_entry(entry: str) -> Tuple[str, int, List[str]]:
    """``hybrid_k5+pool.size=20000+pool.steps=2`` -> ("hybrid", 5, ["pool.size=20000", "pool.steps=2"]); a
    leading ``LABEL=`` is checked and dropped."""
    name, *overrides = split_label(entry)[1].split("+")
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        if "=" not in override:
            raise DfkdError(f"'{override}' in schemes entry '{entry}' is not key=value (e.g. {name}+generator.lr=0.002)")
        if key in SET_PER_RUN:
            raise DfkdError(f"'{key}' in schemes entry '{entry}' is set by compare for each run (from the scheme "
                            "name, seeds and out)")
    return (*parse_scheme(name), overrides)


def run_folder(entry: str) -> str:
    """A schemes entry as a file name (its runs are ``<this>-s<seed>``): its label; unlabelled, the scheme as
    ``dfkd distill`` names it, then its overrides, with characters outside the POSIX portable set
    (A-Z a-z 0-9 . _ -) as _; past NAME_MAX characters, cut short and ended by a hash of the overrides."""
    label, _ = split_label(entry)
    scheme, k, overrides = parse_entry(entry)
    plain = label or re.sub(r"[^A-Za-z0-9._-]", "_", "+".join([scheme_label(scheme, k), *overrides]))
    if len(plain) <= NAME_MAX:
        return plain
    digest = hashlib.sha1("+".join(overrides).encode()).hexdigest()[:8]
    return f"{plain[:NAME_MAX - len(digest) - 1].rstrip('._-')}-{digest}"


def budget_overrides(budget: Optional[str]) -> List[str]:
    """The recipe overrides that set the budget: ``updates:N`` or ``time:SECONDS`` of training clock."""
    if budget is None:
        return []
    kind, _, amount = budget.partition(":")
    if kind == "updates" and amount.isdigit() and int(amount) >= 1:
        return [f"student_updates={int(amount)}"]
    if kind == "time" and re.fullmatch(r"[0-9]+(\.[0-9]*)?", amount) and float(amount) > 0:
        return [f"max_train_seconds={float(amount)}"]
    raise DfkdError(f"budget '{budget}' is not updates:N or time:SECONDS (e.g. budget=updates:2000 or budget=time:600)")


def parse_args(argv: List[str]) -> Tuple[CompareConfig, List[str]]:
    """Split ``key=value`` arguments into compare's own settings and the recipe overrides (budget included)."""
    own, recipe = [], []
    for arg in argv:
        if "=" not in arg:
            raise DfkdError(f"argument '{arg}' is not key=value (e.g. recipe=default seeds=3)")
        key = arg.split("=", 1)[0].strip()
        if key in SET_BY_COMPARE:
            raise DfkdError(f"'{key}' is set by compare for each run; choose schemes=[...] and out=DIR instead")
        (own if key in [f.name for f in fields(CompareConfig)] else recipe).append(arg)
    try:
        cfg: CompareConfig = OmegaConf.to_object(OmegaConf.merge(CompareConfig, parse_overrides(own)))
    except OmegaConfBaseException as err:
        raise DfkdError(one_line(err, "the command line", CompareConfig, "dfkd compare --help")) from err
    if cfg.seeds < 1 or cfg.warmup < 0:
        raise DfkdError(f"need seeds >= 1 and warmup >= 0, got seeds={cfg.seeds} warmup={cfg.warmup}")
    if not cfg.schemes:
        raise DfkdError("schemes must be a non-empty list (e.g. schemes=[two_stage_k5,one_stage])")
    if cfg.methods:  # every method under every scheme: the method is one more override of the entry
        for method in cfg.methods:
            method_keys(split_label(method)[1].split("+")[0])
        cfg.schemes = method_entries(cfg.schemes, cfg.methods)
    names = [entry_name(entry) for entry in cfg.schemes]
    if len(set(names)) != len(names):
        raise DfkdError(f"schemes and methods must be lists without repeats, each entry named once (by its label, "
                        f"else as written), got {names}")
    folders = [run_folder(entry) for entry in cfg.schemes]  # parses and checks every entry
    if len({f.lower() for f in folders}) != len(folders):  # lower: one folder on case-insensitive file systems
        raise DfkdError(f"schemes {cfg.schemes} would share run folders {folders} (letter case aside, as some file "
                        "systems see them); make the labels or entries differ in letters, digits, '.', '_' or '-'")
    budget = budget_overrides(cfg.budget)  # [] or [student_updates=N] or [max_train_seconds=S]
    key = budget[0].split("=")[0] if budget else None
    if any(a.split("=", 1)[0].strip() == key for a in recipe):
        raise DfkdError(f"give the budget once: budget={cfg.budget} or {key}=..., not both")
    return cfg, recipe + budget


def run_order(schemes: List[str], seeds: List[int]) -> List[Tuple[int, str]]:
    """Seed-major, the schemes rotated one place per seed: no scheme always runs first, so slow drift
    of the machine (heat, other jobs) is spread over the schemes instead of landing on one."""
    n = len(schemes)
    return [(seed, schemes[(i + j) % n]) for i, seed in enumerate(seeds) for j in range(n)]


def run_config(recipe: List[str], entry: str, seed: int, out_dir: Path, extra: List[str] = ()) -> Config:
    """The config of one run: the shared recipe overrides, the entry's own, and this run's scheme, k, seed
    and directory (``run_folder(entry)-s<seed>``)."""
    scheme, k, overrides = parse_entry(entry)
    return load_config([*recipe, *overrides, f"scheme={scheme}", f"k={k}", f"seed={seed}", f"out_dir={out_dir}",
                        f"run_name={run_folder(entry)}-s{seed}", *extra])


def run_all(cfg: CompareConfig, recipe: List[str], plan: List[Tuple[int, str, Config]]) -> List[Dict]:
    """The discarded warm-up runs, then every planned run in order; returns their records (``run_record``)."""
    from dfkd.trainer import distill  # late import: `dfkd compare --help` and argument errors stay fast

    if cfg.warmup:
        with tempfile.TemporaryDirectory() as tmp:
            for scheme in cfg.schemes:
                print(f"[dfkd compare] warm-up (discarded): {scheme}, {cfg.warmup} student updates", flush=True)
                distill(run_config(recipe, scheme, plan[0][0], Path(tmp),
                                   [f"student_updates={cfg.warmup}", f"eval_every={cfg.warmup}"]))
    records = []
    for order, (seed, entry, run_cfg) in enumerate(plan, 1):
        print(f"[dfkd compare] run {order}/{len(plan)}: {entry_name(entry)} seed {seed}", flush=True)
        records.append(run_record(entry, seed, Path(distill(run_cfg)["run_dir"])))
    return records


def compare(argv: List[str]) -> Path:
    """Run the comparison described by ``argv``; returns the results directory."""
    cfg, recipe = parse_args(argv)
    base = load_config(recipe)
    if base.data.dataset in ("none", "unlabelled"):  # its table and plot are of test accuracy
        raise DfkdError(f"dfkd compare measures test accuracy and data.dataset={base.data.dataset} has no labels: "
                        f"give it labelled data (data.dataset=mnist, data.root=CLASS_FOLDERS, ...)")
    pick_threads()  # once, before any run: every scheme is timed with the same thread count
    out = Path(cfg.out or Path(base.out_dir) / f"compare-{base.recipe}-{datetime.now():%Y%m%d-%H%M%S}").expanduser()
    if (out / "runs").exists():  # its runs would resume from their checkpoints, not be re-run and re-timed
        raise DfkdError(f"{out} already holds a comparison; pass a new out=DIR")
    plan = [(seed, scheme, run_config(recipe, scheme, seed, out / "runs"))
            for seed, scheme in run_order(cfg.schemes, [base.seed + i for i in range(cfg.seeds)])]
    for _, scheme, c in plan[:len(cfg.schemes)]:  # before the first run: same budget and evaluation points
        cycle = cycle_updates(c)
        if c.student_updates % cycle or c.eval_every % cycle:
            raise DfkdError(f"student_updates={c.student_updates} and eval_every={c.eval_every} must be multiples of "
                            f"the {cycle} student updates of a {scheme} cycle, or the schemes would differ in budget "
                            f"or evaluation points")
    command = "dfkd compare " + " ".join(shlex.quote(a) for a in argv)
    machine = machine_description()
    start = time.perf_counter()
    records = run_all(cfg, recipe, plan)
    total_s = time.perf_counter() - start
    machine["load_end"] = f"{os.getloadavg()[0]:.2f}"

    write_runs(out / "runs.jsonl.gz", records)
    runs = [measured(r) for r in records]
    by_scheme = {entry_name(e): [r for r in runs if r["entry"] == e] for e in cfg.schemes}
    rows = [summarise(name, group) for name, group in by_scheme.items()]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    order = ", ".join(f"{entry_name(r['entry'])} s{r['seed']}" for r in runs)
    labels = [f"`{label}` = `{body}`" for label, body in map(split_label, cfg.schemes) if label]
    write_markdown(out / "results.md", rows, order, labels, cfg, base, machine, command, total_s)
    lines = plot_accuracy_vs_time(by_scheme, runs[0]["summary"]["teacher_acc"], out / "accuracy_vs_time.png")
    (out / "accuracy_vs_time.json").write_text(json.dumps({"lines": lines}, indent=1) + "\n")
    print(f"[dfkd compare] {len(runs)} runs in {total_s:.0f} s: {out / 'results.md'}")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    return one_line_errors(lambda: compare(argv), "compare")


if __name__ == "__main__":
    sys.exit(main())
