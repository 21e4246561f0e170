"""Exercise: the DPO loss, from per-token log-probs (notebook 04; Rafailov et al., 2023, Eq. 7).

A sequence's log-prob is the sum of its tokens' log-probs over the response (mask = 1). With
y_w chosen and y_l rejected, the implicit reward margin and the loss of each pair are

    h    = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]
    loss = -log sigmoid(beta * h)

The log-prob tensors hold numbers at every position, prompt and padding included: only the
masked positions belong to the response.

Grade it with:   minirlhf grade dpo_loss.py
"""

import torch
import torch.nn.functional as F  # noqa: F401


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             chosen_mask: torch.Tensor, rejected_mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token log-probs and masks: (B, T) each -> (B,) one loss per pair (no mean)."""
    raise NotImplementedError("write the DPO loss here")
