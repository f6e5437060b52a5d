"""The domain classifier as a torch-fidelity feature extractor (torch-fidelity 0.4 plug-in contract).

Imported only when torch-fidelity is used (its import costs seconds). Select it with
`feature_extractor=FIDELITY_NAME, feature_extractor_weights_path=<classifier file>`.
"""
from __future__ import annotations

import torch
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from ddo_lib.eval.features import FIDELITY_NAME, load_classifier


class FidelityDomainClassifier(FeatureExtractorBase):
    """Penultimate features of a ddo_lib DigitClassifier; input uint8 [N, 3, H, W] from torch-fidelity."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.classifier = load_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        return ("features",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "features"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return None

    def forward(self, x: torch.Tensor):
        return (self.classifier.features(x).double(),)


def register() -> str:
    """Register the extractor once per process; returns its name."""
    if FIDELITY_NAME not in torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(FIDELITY_NAME, FidelityDomainClassifier)
    return FIDELITY_NAME
