"""Exercise: GRPO's group-relative advantages (notebook 05; Shao et al., 2024, Sec. 4.1.2).

GRPO samples G completions per prompt and scores each against its own group:

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)

with the sample standard deviation (torch.std's default). Dr. GRPO (Liu et al., 2025) drops the
division: with scale_by_std=False, A_i = r_i - mean(r_group). A group whose rewards are all
equal gets advantage 0, never NaN.

Grade it with:   minirlhf grade group_advantages.py
"""

import torch


def group_advantages(rewards: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """rewards: (B, G), B prompts with G completions each -> advantages (B, G)."""
    raise NotImplementedError("write the group advantages here")
