"""Exercise: generalised advantage estimation (notebook 03; Schulman et al., 2016, Eq. 16).

For each position t of a completion, with values V and per-token rewards r:

    delta_t = r_t + gamma * V_{t+1} - V_t
    A_t     = delta_t + gamma * lam * A_{t+1}        (computed backwards, from the last token)
    returns = A + V                                   (the value head's target)

`mask` (B, T) is 1 on the completion's tokens and 0 on the prompt and the padding. The episode
ends at the last masked position: there V_{t+1} = 0 and A_{t+1} = 0. Both outputs are 0 where
the mask is 0, and padding must not leak into real tokens.

Grade it with:   minirlhf grade gae.py
"""

import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards, values, mask: (B, T) -> (advantages (B, T), returns (B, T))."""
    raise NotImplementedError("write GAE here")
