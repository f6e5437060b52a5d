"""VAR family: next-scale autoregressive image model (Tian et al. 2024) with exact likelihoods.

Public API:
    vqvae_from_official(init_kwargs) -> VQVAE         # multi-scale residual VQ tokenizer
    var_from_official(init_kwargs) -> VAR             # the transformer (no hidden label dropout)
    image_to_tokens(vqvae, images) -> list[LongTensor [B, h_k*w_k]]
    log_likelihood(var, vqvae, images, labels) -> Tensor [B]   # exact teacher-forced sum
    sample(var, vqvae, *, labels, seeds, cfg, top_k, top_p, ...) -> VARSamples
    VARFamily(tokenizer, *, uncond_rate, cfg, top_k, top_p, batch_size)   # DDO generator protocol ("var")
    VARReferenceConfig, VARReference, SmallVQVAE       # tiny digits reference (ddo_lib.var.reference)
    build_reference(cfg, dataset) / save_reference(path, ref) / load_reference(path) / reference_family(ref)
"""
from ddo_lib.var.family import VARFamily
from ddo_lib.var.likelihood import log_likelihood, token_log_probs, var_log_ratio
from ddo_lib.var.reference import (
           SmallVQVAE,
           VARReference,
           VARReferenceConfig,
           negative_log_likelihood,
)
from ddo_lib.var.reference import build as build_reference
from ddo_lib.var.reference import family as reference_family
from ddo_lib.var.reference import load as load_reference
from ddo_lib.var.reference import save as save_reference
from ddo_lib.var.sampler import sample
from ddo_lib.var.transformer import var_from_official
from ddo_lib.var.vqvae import (
           image_to_tokens,
           tokens_to_image,
           tokens_to_teacher_forcing_input,
           vqvae_from_official,
)

__all__ = ["SmallVQVAE", "VARFamily", "VARReference", "VARReferenceConfig", "build_reference",
           "image_to_tokens", "load_reference", "log_likelihood", "negative_log_likelihood", "reference_family",
           "sample", "save_reference", "token_log_probs", "tokens_to_image", "tokens_to_teacher_forcing_input",
           "var_from_official", "var_log_ratio", "vqvae_from_official"]
