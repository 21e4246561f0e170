"""Exercise: a solution's score from a process reward model (notebook 06).

A PRM scores every step of a solution with the probability that the step is right. One score
per solution comes from the weakest step (the choice of Math-Shepherd and PURE):

    score = min over the solution's steps of p(step is right)

`mask` (B, S) is 1 on the solution's steps and 0 on padding (the padded positions of
`step_scores` hold arbitrary numbers). A solution with no step at all scores 0.

Grade it with:   minirlhf grade prm_min.py
"""

import torch


def prm_min(step_scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """step_scores, mask: (B, S) -> (B,) one score per solution."""
    raise NotImplementedError("write the min aggregation here")
