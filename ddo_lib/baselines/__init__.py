"""Explicit-discriminator baselines next to DDO: Discriminator Guidance (Kim et al. 2022) and seasoning
by an exponential tilt / sampling-importance-resampling (arXiv 2603.18817)."""
