"""Evaluation: Fréchet distance, precision/recall and KID on features, feature extractors, torch-fidelity
glue, and the selection metric used inside DDO rounds."""
