"""EDM / EDM2 diffusion family (Karras et al. 2022, 2024): networks, samplers, loss, safe loading.

Public API:
    network_from_official(class_name, init_kwargs) -> nn.Module   # official constructor arguments
    load_official(path) -> (net, extras)                          # safe .pkl loader (no code executed)
    export_official(net, template_pkl, out_pkl)                   # back to the official .pkl (generate.py)
    export_safetensors(net, out_path, metadata=None)              # plain weights
    edm_sampler(net, latents, class_labels=None, *, num_steps=18, ...)   # EDM Alg. 2
    edm2_sampler(net, noise, labels=None, *, gnet=None, guidance=1.0, ...)
    generate(net, seeds, labels=None, *, batch_size, sampler='edm')      # uint8, per-seed images
"""
from ddo_lib.edm.checkpoint import load_official
from ddo_lib.edm.export import export_official, export_safetensors
from ddo_lib.edm.loss import denoising_error, edm_loss, edm_weight, sample_sigma
from ddo_lib.edm.precond import (
    EDMPrecond,
    VEPrecond,
    VPPrecond,
    iDDPMPrecond,
    network_from_official,
)
from ddo_lib.edm.sampler import (
    edm2_sampler,
    edm_sampler,
    generate,
    time_steps,
    to_uint8,
)

__all__ = [
    "EDMPrecond", "VEPrecond", "VPPrecond", "iDDPMPrecond", "denoising_error", "edm2_sampler", "edm_loss",
    "edm_sampler", "edm_weight", "export_official", "export_safetensors", "generate", "load_official", "network_from_official",
    "sample_sigma", "time_steps", "to_uint8",
]
