"""Exercise: the Bradley-Terry loss of a reward model (notebook 02).

A reward model r(x, y) is trained on pairs where people preferred y_w (chosen) to y_l (rejected).
Bradley-Terry says P(y_w > y_l) = sigmoid(r_w - r_l), so the loss of one pair is its negative
log-likelihood (Ouyang et al., 2022, Eq. 1):

    loss = -log sigmoid(r_chosen - r_rejected)

Grade it with:   minirlhf grade bradley_terry_loss.py
"""

import torch
import torch.nn.functional as F  # noqa: F401  (F.logsigmoid may help)


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """r_chosen, r_rejected: (B,) rewards of each pair -> (B,) one loss per pair (no mean).

    It must stay finite when r_chosen - r_rejected is very negative (say -120).
    """
    raise NotImplementedError("write the Bradley-Terry loss here")
