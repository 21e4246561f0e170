"""Exercise: the log-prob of one denoising step (notebook 07; DDPO, Black et al., 2023).

A stochastic sampler step draws x_{t-1} ~ N(mean_theta(x_t, t), std_t^2 I), so the step is a
Gaussian policy whose log-prob DDPO puts in its importance ratio. In D dimensions,

    log N(x; mean, std^2 I) = -|x - mean|^2 / (2 std^2) - D log std - D/2 log(2 pi)

Grade it with:   minirlhf grade gaussian_logprob.py
"""

import math  # noqa: F401

import torch


def gaussian_logprob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """x, mean: (..., D); std: (...) one std per sample -> (...) summed over D."""
    raise NotImplementedError("write the Gaussian log-prob here")
