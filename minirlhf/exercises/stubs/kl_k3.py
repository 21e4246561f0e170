"""Exercise: the k3 estimator of KL(pi || pi_ref) (notebook 05; Schulman, "Approximating KL
divergence", 2020; the KL term in GRPO's loss, Shao et al., 2024, Eq. 4).

Tokens are sampled from pi. With r = pi_ref(x) / pi(x) for each sampled token,

    k3 = r - 1 - log r

is unbiased for KL(pi || pi_ref), and >= 0 for every sample.

Grade it with:   minirlhf grade kl_k3.py
"""

import torch


def kl_k3(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """logp, logp_ref: (B, T) log-probs of the sampled tokens under pi and pi_ref -> (B, T)."""
    raise NotImplementedError("write k3 here")
