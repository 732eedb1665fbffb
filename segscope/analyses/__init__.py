"""The analyses of a study, one module each, and the registry that orders them.

Each analysis (:class:`~segscope.analyses.base.Analysis`) computes its numbers, figures
and CSV tables from a shared :class:`~segscope.analyses.context.StudyContext` and owns
its sections of the report. :data:`REGISTRY` is the one list that says which analyses a
study runs and in which order the report shows them; add an analysis by adding one line
(see ``docs/extending.md``).
"""

from __future__ import annotations

from .base import Analysis, Section, Table
from .bias import Bias
from .classes import ClassComparison
from .context import (
    DEFAULT_SYNTHETIC,
    NoTruePositives,
    Sample,
    StudyContext,
    StudySettings,
    default_synthetic,
)
from .faithfulness import Faithfulness
from .features import Features
from .images import Images
from .layerwise import Layerwise
from .profiles import SyntheticVsReal
from .separation import Separation
from .switch_off import SwitchOff

#: The analyses of ``segscope study``, in report order (thesis §9.4-§9.11).
REGISTRY: list[Analysis] = [
    Images(),
    Layerwise(),
    Features(),
    SwitchOff(),
    Separation(),
    ClassComparison(),
    SyntheticVsReal(),
    Bias(),
    Faithfulness(),
]

__all__ = [
    "DEFAULT_SYNTHETIC", "REGISTRY", "Analysis", "Bias", "ClassComparison", "Faithfulness",
    "Features",
    "Images", "Layerwise", "NoTruePositives", "Sample", "Section", "Separation",
    "StudyContext", "StudySettings", "SwitchOff", "SyntheticVsReal", "Table",
    "default_synthetic",
]
