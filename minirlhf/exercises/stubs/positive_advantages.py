"""Exercise: RAFT++'s positive-only advantages (notebook 11, section 0b; Xiong et al., 2025).

RAFT++ is rejection sampling written as a policy gradient: of the G completions sampled for a prompt, the
correct ones get advantage 1 and the wrong ones 0 (no baseline: nothing is pushed down). A completion is
correct when its reward is above 0.5. With distinct=True each distinct correct completion of a prompt is
credited once: a completion equal (token for token) to an earlier one of the same group gets 0, so a prompt
solved the same way eight times does not weigh eight times as much. Deduplicate within each group only.

    A_i = 1[r_i > 0.5] * 1[o_i is the first copy of its completion in its group]      (distinct=True)
    A_i = 1[r_i > 0.5]                                                               (distinct=False)

Grade it with:   minirlhf grade positive_advantages.py
"""

import torch


def positive_advantages(completions: torch.Tensor, rewards: torch.Tensor, distinct: bool = True) -> torch.Tensor:
    """completions: (B, G, T) token ids of G completions per prompt; rewards: (B, G) -> advantages (B, G), float."""
    raise NotImplementedError("write the positive-only advantages here")
