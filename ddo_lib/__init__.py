"""ddo_lib: a reference companion to Direct Discriminative Optimization (Zheng et al. 2025)."""

__version__ = "0.1.0"
