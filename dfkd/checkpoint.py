"""Checkpoints that survive a crash, and an exact resume from them.

A checkpoint is a folder ``run_dir/checkpoints/step_NNNNNN``: Accelerate's ``save_state``
(student, generator, both optimizers, torch/numpy/python RNG states), ``dfkd_state_P.pt``
per process (the loop's counters and the run's stateful extras: latent-code RNG, pool, averages), a copy of the
run's ``config.yaml`` and, written last, ``complete`` (the size of every file). It is built
under a temporary name and renamed into place, so a crash while writing leaves the previous
checkpoint as the newest complete one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from omegaconf import OmegaConf

from dfkd.errors import DfkdError
from dfkd.schema import LOGGING_KEYS, Config

COMPLETE = "complete"


class DamagedCheckpoint(Exception):
    """A checkpoint folder that cannot be restored (truncated, corrupt, or not dfkd's)."""


def flat(tree: Dict, prefix: str = "") -> Dict[str, object]:
    out = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def complete_checkpoints(run_dir: Path) -> List[Path]:
    """The complete checkpoints of a run, oldest first (unfinished ``.tmp-*`` folders are ignored)."""
    folder = run_dir / "checkpoints"
    found = [p for p in folder.glob("step_*") if (p / COMPLETE).is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: p.name)


def config_differences(saved_yaml: Path, cfg: Config) -> List[str]:
    """``key: saved -> now`` for every key that changes the result and differs from the saved config."""
    saved = flat(OmegaConf.to_container(OmegaConf.load(saved_yaml)))
    now = flat(OmegaConf.to_container(OmegaConf.structured(cfg)))
    keys = [k for k in now if k in saved and k not in LOGGING_KEYS]
    return [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in keys if saved[k] != now[k]]


def resume_candidates(cfg: Config, run_dir: Path) -> List[Path]:
    """Checkpoints to try, newest first; [] starts from scratch. Refuses a run made with another config."""
    if cfg.resume == "none":
        return []
    if cfg.resume == "auto":
        found = complete_checkpoints(run_dir)[::-1]
    else:
        path = Path(cfg.resume).expanduser()
        found = complete_checkpoints(path)[::-1] if (path / "checkpoints").is_dir() else [path]
        if not (found and (found[0] / COMPLETE).is_file()):
            raise DfkdError(f"resume checkpoint '{cfg.resume}' not found (or not complete): pass a "
                            f"run_dir/checkpoints/step_NNNNNN folder, resume=auto or resume=none")
    if found:
        try:
            diff = config_differences(found[0] / "config.yaml", cfg)
        except Exception:  # unreadable config: the checkpoint is damaged, and restore() will say so
            diff = []
        if diff:
            raise DfkdError(f"cannot resume {found[0]}: it was made with a different config ({'; '.join(diff)}); "
                            f"use the same values, or resume=none / another run_name to start over")
    return found


def restore(accelerator, candidates: List[Path], load_extras: Callable[[Dict], None],
            explicit: bool) -> Tuple[Optional[Path], Dict]:
    """Load the newest loadable checkpoint into everything the accelerator prepared, and the run's stateful extras
    through ``load_extras``: (its path, its counters).

    A damaged newest checkpoint falls back to the previous one, saying so (unless it was named explicitly).
    """
    for i, ckpt in enumerate(candidates):
        try:
            expected = json.loads((ckpt / COMPLETE).read_text())["files"]
            for name, size in expected.items():
                actual = (ckpt / name).stat().st_size if (ckpt / name).is_file() else None
                if actual != size:
                    raise DamagedCheckpoint(f"{name} is {actual} bytes, expected {size}")
            accelerator.load_state(str(ckpt))  # model files are strict: another architecture fails here
            state = torch.load(ckpt / f"dfkd_state_{accelerator.process_index}.pt", weights_only=True)
            load_extras(state)  # latent-code RNG, pool, averages: Parts.extras
        except Exception as err:
            reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}" if str(err) else type(err).__name__
            if explicit or i + 1 == len(candidates):
                raise DfkdError(f"checkpoint {ckpt} cannot be loaded ({reason}); pass resume=none to start over"
                                ) from err
            accelerator.print(f"[dfkd] checkpoint {ckpt.name} cannot be loaded ({reason}); "
                              f"falling back to the previous one, {candidates[i + 1].name}")
            continue
        accelerator.print(f"[dfkd] resuming from {ckpt} (student update {state['updates']})")
        return ckpt, state
    return None, {}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(accelerator, run_dir: Path, state: Dict, keep: int) -> Path:
    """Write ``run_dir/checkpoints/step_NNNNNN`` atomically and keep only the newest ``keep`` ones."""
    folder = run_dir / "checkpoints"
    final = folder / f"step_{state['updates']:06d}"
    tmp = folder / f".tmp-{final.name}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    torch.save(state, tmp / f"dfkd_state_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.copyfile(run_dir / "config.yaml", tmp / "config.yaml")
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        for name in files:  # on disk before the marker says so: survives a power cut, not only a crash
            _fsync(tmp / name)
        (tmp / COMPLETE).write_text(json.dumps({"files": files}) + "\n")
        _fsync(tmp / COMPLETE)
        if final.exists():  # the same step saved again (e.g. a resumed run that had just ended)
            shutil.rmtree(final)
        tmp.rename(final)
        _fsync(folder)
        for old in complete_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            remove_checkpoint(old)
    accelerator.wait_for_everyone()
    return final


def remove_checkpoint(ckpt: Path) -> None:
    """Delete a checkpoint folder, its ``complete`` marker first: a crash half-way leaves a folder that no resume
    takes for complete, and the next start removes it (``prepare_run_dir``)."""
    (ckpt / COMPLETE).unlink(missing_ok=True)
    _fsync(ckpt)
    shutil.rmtree(ckpt)


def prepare_run_dir(accelerator, run_dir: Path, fresh: bool) -> None:
    """Drop unfinished checkpoint folders; on a fresh start, also the checkpoints of an earlier run here."""
    folder = run_dir / "checkpoints"
    if accelerator.is_main_process and folder.is_dir():
        # unfinished writes, and folders whose pruning a crash interrupted (marker gone first: never restorable)
        for tmp in [*folder.glob(".tmp-*"), *(p for p in folder.glob("step_*") if not (p / COMPLETE).is_file())]:
            shutil.rmtree(tmp)
        old = complete_checkpoints(run_dir)
        if fresh and old:
            accelerator.print(f"[dfkd] starting over in {run_dir}: removing {len(old)} old checkpoint(s)")
            for ckpt in old:
                remove_checkpoint(ckpt)
    accelerator.wait_for_everyone()


def trim_metrics(path: Path, updates: int) -> None:
    """Keep the metrics records up to the resumed update: the resumed run writes the later ones again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["update"] <= updates:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):  # a line cut short by the crash
            continue
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)
