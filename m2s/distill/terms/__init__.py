"""The distillation terms, one module each, and their registration (the one place).

Adding a term: a new file here with its `TermConfig` subclass and `KDTerm` subclass (a
`features()` naming the maps it needs, a `forward(ctx)` returning its unweighted loss), then
its line in :data:`TERMS` below and its field in :class:`m2s.distill.config.DistillConfig`
(``<name>: <Name>Config = Field(default_factory=<Name>Config)``). The distillation module builds
every registered term whose weight is above 0, in this order, and logs it as ``kd_<name>``.
"""

from __future__ import annotations

from m2s.distill.terms.affinity import AffinityConfig, AffinityKD
from m2s.distill.terms.base import KDContext, KDTerm, TermConfig, TermSetup
from m2s.distill.terms.feature import FeatureConfig, FeatureKD
from m2s.distill.terms.graph import GraphConfig, GraphKD
from m2s.distill.terms.logit import LogitConfig, LogitKD

#: name -> term class, in the order terms are built and summed (the order of every result).
TERMS: dict[str, type[KDTerm]] = {
    "logit": LogitKD,
    "feature": FeatureKD,
    "affinity": AffinityKD,
    "graph": GraphKD,
}

__all__ = [
    "TERMS",
    "AffinityConfig",
    "AffinityKD",
    "FeatureConfig",
    "FeatureKD",
    "GraphConfig",
    "GraphKD",
    "KDContext",
    "KDTerm",
    "LogitConfig",
    "LogitKD",
    "TermConfig",
    "TermSetup",
]
