"""The tests' way to make a run's parts: dfkd.build.make_parts, as runs and benchmarks make them, from the schema's
defaults with a few ``key=value`` overrides (no recipe, no validation: tests may use lr=0 to read gradients)."""
from __future__ import annotations

from typing import Iterable

from accelerate import Accelerator
from omegaconf import OmegaConf

from dfkd.build import make_parts
from dfkd.schema import Config
from dfkd.schemes import Parts


def schema_config(keys: Iterable[str] = ()) -> Config:
    """The schema's defaults (not the default recipe) with ``key=value`` overrides."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_dotlist(list(keys))))


def parts_for(teacher, student, generator, keys: Iterable[str] = (), optimizers=None, pool=None,
              accelerator=None) -> Parts:
    """``make_parts`` for these networks under ``schema_config(keys)``, on a CPU accelerator unless given one."""
    return make_parts(schema_config(keys), teacher, student, generator, accelerator or Accelerator(cpu=True),
                      optimizers=optimizers, pool=pool)
