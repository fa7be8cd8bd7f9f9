"""Method presets: the field's generator-based DFKD methods, each as the loss keys that define it.

``method=NAME`` (command line or recipe) sets every key below over the recipe's own; keys given on
the command line still win. A preset fixes only what the method *is* (what student and generator
minimise); the pair, budget, optimiser and scheme stay the recipe's, so each method runs under
``scheme=two_stage``, ``one_stage`` and ``hybrid`` alike. Written from the papers; docs/methods.md
shows how they compare.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List

from dfkd.errors import DfkdError
from dfkd.priors import PRIORS


@dataclass(frozen=True)
class Method:
    paper: str  # who, when, what
    formula: str  # what student (S) and generator (G) minimise, t/s the teacher/student logits
    keys: Dict[str, Any]


# DAFL's code takes its entropy in log10; dfkd's entropy term (shared with the default recipe's weight 1)
# takes the natural log, so DAFL's weight 5 becomes 5 / ln 10: the same term, the same gradient.
DAFL_IE = 5.0 / math.log(10.0)

# Every preset states every method key, so switching methods never inherits another method's terms.
PLAIN = {"loss": "l1", "adversarial": 1.0, **{f"priors.{name}": 0.0 for name in PRIORS}, "features.at": 0.0,
         "features.at_adversarial": None, "generator.ema": 0.0}

METHODS: Dict[str, Method] = {
    "dfad": Method(
        "Fang et al. 2019, Data-Free Adversarial Distillation (arXiv:1912.11006)",
        "S: min |t - s|_1;  G: max |t - s|_1",
        PLAIN),
    "dafl": Method(
        "Chen et al. 2019, Data-Free Learning of Student Networks (ICCV), MNIST weights",
        "G: min CE(t, argmax t) - 0.1 |f_T|_1 + 5 sum_c p_c log10 p_c (not adversarial; = 2.171 sum_c p_c ln p_c);  "
        "S: min KL(t || s)",
        {**PLAIN, "loss": "kl", "adversarial": 0.0, "priors.oh": 1.0, "priors.ie": DAFL_IE, "priors.act": 0.1}),
    "zskt": Method(
        "Micaelli & Storkey 2019, Zero-shot Knowledge Transfer via Adversarial Belief Matching (NeurIPS)",
        "S: min KL(t || s) + 250 sum_j |a_S^j - a_T^j|^2 (attention of the last 3 stages);  G: max KL(t || s)",
        {**PLAIN, "loss": "kl", "features.at": 250.0}),
    "dfq": Method(
        "Choi et al. 2020, Data-Free Network Quantization With Adversarial Knowledge Distillation (CVPRW)",
        "S: min KL(t || s);  G: max KL(t || s) - sum_l |mu_l - mu_l^BN|_2 + |var_l - var_l^BN|_2 (teacher BN stats)",
        {**PLAIN, "loss": "kl", "priors.bn": 1.0}),
    "cmi": Method(
        "Fang et al. 2021, Contrastive Model Inversion for Data-Free Knowledge Transfer (IJCAI)",
        "G: min BN stats + 0.5 CE(t, argmax t) + 5 sum_c p_c ln p_c - 0.5 KL(t || s) + 0.8 InfoNCE(f_T(x), "
        "f_T(view x); pool);  S: min KL(t || s), mostly on the replay pool. CMI's class loss targets sampled "
        "labels, which balance the classes; a generator without labels cannot take them, so DAFL's entropy "
        "term (weight 5, natural log) balances them here",
        {**PLAIN, "loss": "kl", "adversarial": 0.5, "priors.bn": None, "priors.oh": 0.5, "priors.ie": 5.0,
         "priors.cmi": 0.8}),
    "mad": Method(
        "Do et al. 2022, Momentum Adversarial Distillation (NeurIPS)",
        "DFAD, and half of every generated student batch from an EMA of the generator (decay 0.9), so the "
        "student keeps seeing what the generator moved away from",
        {**PLAIN, "generator.ema": 0.9}),
}


def method_keys(name: str) -> List[str]:
    """The preset's ``key=value`` list (``null`` for None), ready to merge as OmegaConf dotlist."""
    if name not in METHODS:
        raise DfkdError(f"method '{name}' is not one of {', '.join(METHODS)}")
    return [f"{k}={'null' if v is None else v}" for k, v in METHODS[name].keys.items()]
