"""EDM preconditioning D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (Karras et al. 2022, Table 1).

EDMPrecond, VPPrecond, VEPrecond and iDDPMPrecond wrap a UNet as child `model`, so their state_dict keys
(`model.…`) match NVlabs/edm checkpoints. `network_from_official` rebuilds any of them (and the EDM2
`Precond`) from the constructor arguments recorded in an official pickle.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddo_lib.edm import networks_edm2
from ddo_lib.edm.networks import DhariwalUNet, SongUNet

MODEL_TYPES = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}
UNET_ARGS_SET_BY_PRECOND = ("img_resolution", "in_channels", "out_channels", "label_dim")


def unet_argument_names(model_type: str) -> list[str]:
    """Keyword arguments a preconditioner forwards to the UNet `model_type`."""
    _check_model_type(model_type)
    names = inspect.signature(MODEL_TYPES[model_type].__init__).parameters
    return [name for name in names if name not in ("self", *UNET_ARGS_SET_BY_PRECOND)]


def _check_model_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {sorted(MODEL_TYPES)}; found {model_type!r}")


def _build_unet(model_type: str, *, img_resolution: int, img_channels: int, out_channels: int,
                label_dim: int, model_kwargs: Mapping[str, Any]) -> nn.Module:
    """Build the UNet F_theta, rejecting keyword arguments it does not accept."""
    accepted = unet_argument_names(model_type)
    unknown = sorted(set(model_kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"unknown {model_type} arguments {unknown}; accepted: {accepted}")
    return MODEL_TYPES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                   out_channels=out_channels, label_dim=label_dim, **model_kwargs)


def _as_float_tensor(value: torch.Tensor | float) -> torch.Tensor:
    """Tensors pass through (keeping their device even under a `torch.device` context); numbers -> f32 CPU."""
    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() else value.to(torch.float32)
    return torch.tensor(float(value), dtype=torch.float32, device="cpu")


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


class _Precond(nn.Module):
    """Shared input handling of the EDM preconditioners (prologue of `forward`, label checks)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool):
        super().__init__()
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.label_dim = int(label_dim)
        self.use_fp16 = bool(use_fp16)

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Identity: every sigma is representable (EDM, VP, VE)."""
        return torch.as_tensor(sigma)

    def _prepare(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None):
        """Validate and cast inputs: x -> [N, C, R, R] f32, sigma -> [N or 1, 1, 1, 1] f32, labels -> [N or 1, L]."""
        expected = [self.img_channels, self.img_resolution, self.img_resolution]
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or list(x.shape[1:]) != expected:
            found = _shape(x) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected shape [N, {', '.join(map(str, expected))}], found {found}")
        batch = x.shape[0]
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32)
        if sigma.numel() not in (1, batch):
            raise ValueError(f"sigma: expected 1 or N={batch} values broadcastable to x, found shape {_shape(sigma)}")
        sigma = sigma.reshape(-1, 1, 1, 1)  # [N or 1, 1, 1, 1]
        return x, sigma, self._prepare_labels(class_labels, batch, x.device)

    def _prepare_labels(self, class_labels: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
        """None -> zeros [1, L] (label_dim > 0); int [N] -> one-hot [N, L]; float [N or 1, L] -> f32."""
        if self.label_dim == 0:
            if class_labels is not None:
                raise ValueError("class_labels given, but the network is unconditional (label_dim=0); "
                                 f"expected None, found shape {_shape(class_labels)}")
            return None
        if class_labels is None:
            return torch.zeros([1, self.label_dim], device=device)
        class_labels = torch.as_tensor(class_labels, device=device)
        if not class_labels.is_floating_point():
            return self._one_hot(class_labels, batch)
        if class_labels.ndim != 2 or class_labels.shape[0] not in (1, batch) or class_labels.shape[1] != self.label_dim:
            raise ValueError(f"class_labels: expected shape [{batch} or 1, {self.label_dim}] (one-hot) or integer "
                             f"class indices [{batch}], found {_shape(class_labels)} {class_labels.dtype}")
        return class_labels.to(torch.float32)

    def _one_hot(self, indices: torch.Tensor, batch: int) -> torch.Tensor:
        """Integer class indices [N] in [0, label_dim) -> one-hot float32 [N, label_dim]."""
        if indices.ndim != 1 or indices.shape[0] not in (1, batch):
            raise ValueError(f"class_labels: integer class indices must have shape [{batch}], "
                             f"found {_shape(indices)}")
        bad = indices[(indices < 0) | (indices >= self.label_dim)]
        if bad.numel():
            raise ValueError(f"class_labels: class index {int(bad[0])} out of range; "
                             f"expected 0 <= index < label_dim={self.label_dim}")
        return F.one_hot(indices.long(), self.label_dim).to(torch.float32)

    def _unet_dtype(self, x: torch.Tensor, force_fp32: bool) -> torch.dtype:
        """fp16 only when requested, not forced off, and on CUDA (CPU always runs fp32)."""
        use_half = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        return torch.float16 if use_half else torch.float32

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) for sigma [N or 1, 1, 1, 1]; defined by each preconditioner."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                force_fp32: bool = False, augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        """D_x = c_skip x + c_out F_theta(c_in x; c_noise).

        x: [N, C, R, R] (any float dtype); sigma: [N], [N, 1, 1, 1] or scalar; class_labels: None,
        float one-hot [N or 1, L] or integer class indices [N]; augment_labels: [N, A] or None.
        Returns D_x: [N, C, R, R] float32. The UNet runs in fp16 only if use_fp16, CUDA and not force_fp32.
        """
        x, sigma, class_labels = self._prepare(x, sigma, class_labels)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        dtype = self._unet_dtype(x, force_fp32)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels, augment_labels=augment_labels)
        if F_x.dtype != dtype:
            raise RuntimeError(f"UNet returned {F_x.dtype}, expected {dtype}")
        return c_skip * x + c_out * F_x[:, :self.img_channels].to(torch.float32)  # [N, C, R, R]


class EDMPrecond(_Precond):
    """EDM preconditioning (Karras et al. 2022, Table 1 "Ours", Eq. 7)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, *,
                 use_fp16: bool = False,               # run the UNet in fp16 on CUDA
                 sigma_min: float = 0.0,               # lowest supported noise level
                 sigma_max: float = float("inf"),      # highest supported noise level
                 sigma_data: float = 0.5,              # expected std of the data
                 model_type: str = "DhariwalUNet",     # 'SongUNet' | 'DhariwalUNet'
                 **model_kwargs: Any):                 # UNet hyper-parameters (validated)
        super().__init__(img_resolution, img_channels, label_dim, use_fp16)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = float(sigma_data)
        self.model = _build_unet(model_type, img_resolution=self.img_resolution, img_channels=self.img_channels,
                                 out_channels=self.img_channels, label_dim=self.label_dim, model_kwargs=model_kwargs)

    def coefficients(self, sigma: torch.Tensor):
        """Table 1 of Karras et al. 2022 for this row; sigma: [N or 1, 1, 1, 1]."""
        sigma_data = self.sigma_data
        c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
        c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
        c_in = 1 / (sigma_data ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise


class VPPrecond(_Precond):
    """Variance-preserving preconditioning of Song et al. 2021 (Karras et al. 2022, Table 1 "VP")."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, *,
                 use_fp16: bool = False,               # run the UNet in fp16 on CUDA
                 beta_d: float = 19.9,                 # extent of the noise level schedule
                 beta_min: float = 0.1,                # initial slope of the noise level schedule
                 M: int = 1000,                        # original number of timesteps
                 epsilon_t: float = 1e-5,              # minimum t, so sigma_min = sigma(epsilon_t)
                 model_type: str = "SongUNet",         # 'SongUNet' | 'DhariwalUNet'
                 **model_kwargs: Any):                 # UNet hyper-parameters (validated)
        super().__init__(img_resolution, img_channels, label_dim, use_fp16)
        self.beta_d = float(beta_d)
        self.beta_min = float(beta_min)
        self.M = int(M)
        self.epsilon_t = float(epsilon_t)
        self.sigma_min = float(self.sigma(self.epsilon_t))
        self.sigma_max = float(self.sigma(1.0))
        self.model = _build_unet(model_type, img_resolution=self.img_resolution, img_channels=self.img_channels,
                                 out_channels=self.img_channels, label_dim=self.label_dim, model_kwargs=model_kwargs)

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """sigma(t) = sqrt(exp(beta_d t²/2 + beta_min t) - 1)."""
        t = _as_float_tensor(t)
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """t(sigma) = (sqrt(beta_min² + 2 beta_d ln(1 + sigma²)) - beta_min) / beta_d."""
        sigma = _as_float_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma: torch.Tensor):
        """Table 1 of Karras et al. 2022 for this row; sigma: [N or 1, 1, 1, 1]."""
        c_skip = 1
        c_out = -sigma
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        return c_skip, c_out, c_in, c_noise


class VEPrecond(_Precond):
    """Variance-exploding preconditioning of Song et al. 2021 (Karras et al. 2022, Table 1 "VE")."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, *,
                 use_fp16: bool = False,               # run the UNet in fp16 on CUDA
                 sigma_min: float = 0.02,              # lowest supported noise level
                 sigma_max: float = 100.0,             # highest supported noise level
                 model_type: str = "SongUNet",         # 'SongUNet' | 'DhariwalUNet'
                 **model_kwargs: Any):                 # UNet hyper-parameters (validated)
        super().__init__(img_resolution, img_channels, label_dim, use_fp16)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.model = _build_unet(model_type, img_resolution=self.img_resolution, img_channels=self.img_channels,
                                 out_channels=self.img_channels, label_dim=self.label_dim, model_kwargs=model_kwargs)

    def coefficients(self, sigma: torch.Tensor):
        """Table 1 of Karras et al. 2022 for this row; sigma: [N or 1, 1, 1, 1]."""
        c_skip = 1
        c_out = sigma
        c_in = 1
        c_noise = (0.5 * sigma).log()
        return c_skip, c_out, c_in, c_noise


class iDDPMPrecond(_Precond):
    """Improved-DDPM preconditioning of Nichol & Dhariwal 2021 (Karras et al. 2022, Table 1 "iDDPM")."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, *,
                 use_fp16: bool = False,               # run the UNet in fp16 on CUDA
                 C_1: float = 0.001,                   # timestep adjustment at low noise levels
                 C_2: float = 0.008,                   # timestep adjustment at high noise levels
                 M: int = 1000,                        # original number of timesteps
                 model_type: str = "DhariwalUNet",     # 'SongUNet' | 'DhariwalUNet'
                 **model_kwargs: Any):                 # UNet hyper-parameters (validated)
        super().__init__(img_resolution, img_channels, label_dim, use_fp16)
        self.C_1 = float(C_1)
        self.C_2 = float(C_2)
        self.M = int(M)
        self.model = _build_unet(model_type, img_resolution=self.img_resolution, img_channels=self.img_channels,
                                 out_channels=self.img_channels * 2, label_dim=self.label_dim,
                                 model_kwargs=model_kwargs)
        self.register_buffer("u", self._discrete_sigmas())  # [M + 1], u_0 largest, u_M = 0
        self.sigma_min = float(self.u[self.M - 1])
        self.sigma_max = float(self.u[0])

    def alpha_bar(self, j: torch.Tensor | int) -> torch.Tensor:
        """Cosine schedule alpha_bar(j) = sin²(π j / (2 M (C_2 + 1)))."""
        j = _as_float_tensor(j)
        return (0.5 * math.pi * j / self.M / (self.C_2 + 1)).sin() ** 2

    def _discrete_sigmas(self) -> torch.Tensor:
        """u_M = 0, u_{j-1} = sqrt((u_j² + 1) / max(alpha_bar(j-1)/alpha_bar(j), C_1) - 1), in float32."""
        u = torch.zeros(self.M + 1, device="cpu")
        for j in range(self.M, 0, -1):
            ratio = (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=self.C_1)
            u[j - 1] = ((u[j] ** 2 + 1) / ratio - 1).sqrt()
        return u

    def round_sigma(self, sigma: torch.Tensor | float, return_index: bool = False) -> torch.Tensor:
        """Snap sigma to the nearest u_j (or return j); keeps sigma's shape, dtype and device."""
        sigma = torch.as_tensor(sigma)
        distance = (sigma.to(self.u.device, torch.float32).reshape(-1, 1) - self.u.reshape(1, -1)).abs()
        index = distance.argmin(dim=1)  # [numel(sigma)]
        result = index if return_index else self.u[index].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)

    def coefficients(self, sigma: torch.Tensor):
        """Table 1 of Karras et al. 2022 for this row; sigma: [N or 1, 1, 1, 1]."""
        c_skip = 1
        c_out = -sigma
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(torch.float32)
        return c_skip, c_out, c_in, c_noise


PRECOND_TYPES = {"EDMPrecond": EDMPrecond, "VPPrecond": VPPrecond, "VEPrecond": VEPrecond,
                 "iDDPMPrecond": iDDPMPrecond}
OFFICIAL_CLASS_NAMES = (*PRECOND_TYPES, "Precond")


def plain_value(value: Any) -> Any:
    """Numpy scalars/arrays and tuples from an official pickle -> Python scalars and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain_value(item) for item in value]
    return value


def _argument_names(cls: type) -> list[str]:
    """Named constructor arguments of `cls` (without self and **kwargs)."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in parameters if p.name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]


def _edm2_precond(kwargs: dict[str, Any]) -> nn.Module:
    """EDM2 `Precond` (ddo_lib.edm.networks_edm2); its **kwargs go to the module's `UNet`."""
    accepted = _argument_names(networks_edm2.Precond)
    unet = getattr(networks_edm2, "UNet", None)
    if unet is not None:
        accepted += [name for name in _argument_names(unet) if name not in accepted]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(f"unknown Precond arguments {unknown}; accepted: {accepted}")
    try:
        return networks_edm2.Precond(**kwargs)
    except TypeError as error:
        raise ValueError(f"EDM2 Precond rejected init_kwargs {sorted(kwargs)} (accepted: {accepted}): "
                         f"{error}") from error


def network_from_official(class_name: str, init_kwargs: Mapping[str, Any]) -> nn.Module:
    """Build the preconditioned network named `class_name` from official constructor kwargs (`_init_kwargs`).

    class_name: 'EDMPrecond' | 'VPPrecond' | 'VEPrecond' | 'iDDPMPrecond' (NVlabs/edm) or 'Precond' (EDM2).
    Numpy scalars/arrays and tuples are accepted. Weights are random: load the checkpoint's state_dict next.
    """
    if class_name not in OFFICIAL_CLASS_NAMES:
        raise ValueError(f"unknown class_name {class_name!r}; accepted: {list(OFFICIAL_CLASS_NAMES)}")
    kwargs = {str(key): plain_value(value) for key, value in init_kwargs.items()}
    if class_name == "Precond":
        return _edm2_precond(kwargs)
    cls = PRECOND_TYPES[class_name]
    model_type = kwargs.get("model_type", inspect.signature(cls.__init__).parameters["model_type"].default)
    accepted = _argument_names(cls) + unet_argument_names(model_type)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"unknown {class_name} arguments {unknown} (model_type={model_type!r}); "
                         f"accepted: {accepted}")
    return cls(**kwargs)
