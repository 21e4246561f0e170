"""Exercise: PPO's clipped surrogate (notebook 03; Schulman et al., 2017, Eq. 7).

The importance ratio of each sampled token under the new and the old policy, and the clipped
objective PPO maximises,

    ratio     = pi(a|s) / pi_old(a|s) = exp(logp - old_logp)
    objective = min(A * ratio, A * clip(ratio, 1 - clip_low, 1 + clip_high))

returned as a LOSS to minimise, per token (the caller masks and averages). `clip_high`
defaults to `clip_low`; DAPO's clip-higher sets it larger (Yu et al., 2025).

Grade it with:   minirlhf grade clipped_surrogate.py
"""

import torch


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      clip_low: float = 0.2, clip_high: float | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """logp, old_logp, advantages: (B, T) -> (loss (B, T), ratio (B, T))."""
    raise NotImplementedError("write the clipped surrogate loss here")
