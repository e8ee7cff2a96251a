"""Classifiers: the architectures (:mod:`.zoo`), third-party adapters (:mod:`.adapters`: timm,
RobustBench) and the load/train/cache lifecycle (:mod:`.lifecycle`). Importing the package
registers every built-in model."""

from __future__ import annotations

from bench.models.adapters import (
    RobustBenchClassifier,
    TimmClassifier,
    import_robustbench,
    timm_hub_problem,
)
from bench.models.lifecycle import (
    RECIPE_OPTIONS,
    LoadedModel,
    PendingClassifier,
    load_classifier,
    recipe_options,
)
from bench.models.zoo import CifarResNet18, CifarVGG11, Classifier, CNN3x3, PaperCNN

__all__ = [
    "CNN3x3", "CifarResNet18", "CifarVGG11", "Classifier", "LoadedModel", "PaperCNN",
    "PendingClassifier", "RECIPE_OPTIONS", "RobustBenchClassifier", "TimmClassifier",
    "import_robustbench", "load_classifier", "recipe_options", "timm_hub_problem",
]
