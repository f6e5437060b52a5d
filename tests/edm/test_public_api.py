"""The public names external checks call keep their signatures."""
import inspect
import math

import ddo_lib.edm as edm


def test_public_names_exist():
    for name in ("network_from_official", "load_official", "edm_sampler", "edm2_sampler", "generate"):
        assert callable(getattr(edm, name)), name


def test_edm_sampler_signature_matches_the_official_one():
    parameters = inspect.signature(edm.edm_sampler).parameters
    assert list(parameters)[:3] == ["net", "latents", "class_labels"]
    defaults = {k: v.default for k, v in parameters.items()}
    assert defaults["num_steps"] == 18 and defaults["sigma_min"] == 0.002 and defaults["sigma_max"] == 80
    assert defaults["rho"] == 7 and defaults["S_churn"] == 0 and defaults["S_min"] == 0
    assert math.isinf(defaults["S_max"]) and defaults["S_noise"] == 1 and "randn_like" in defaults
