"""The advantage scan's reference: `minirlhf.rl.gae` and `minirlhf.rl.discounted_returns`.

GAE (Schulman et al., 2016, Eq. 16) and discounted returns are both a *reverse linear scan*
over time, independent across the batch:

    A_t = delta_t + c_t * A_{t+1},     delta_t = r_t + gamma * alive_{t+1} V_{t+1} - V_t,
                                       c_t     = gamma * lam * alive_{t+1}
    G_t = r_t     + gamma * alive_{t+1} * G_{t+1}

with alive_{t+1} = mask[:, t+1] (0 after the last step), so an episode ends at its last masked
position and ragged masks need no special case. Outputs are zeroed outside the mask.

The specification is the Python loop in `rl.py` (one vectorised step per time index, T
launches of small kernels on a GPU); it is not re-implemented here. `scan_triton.py` runs
the same recursion inside one kernel, one program per block of sequences, and
`tests/test_kernels.py` checks the two agree.
"""

from __future__ import annotations

from minirlhf.rl import discounted_returns, gae

gae_reference = gae
discounted_returns_reference = discounted_returns

__all__ = ["gae_reference", "discounted_returns_reference"]
