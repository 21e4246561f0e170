"""The machinery around an RL loop's rollouts, shared by the GRPO family (grpo.py): who samples and who is the
reference, stacking rollouts, a rank's share of them under torchrun, and what the first rollouts say about a run
that cannot learn. `cfg` is a `grpo.GRPOConfig` (not imported: grpo.py imports this module).

    make_reference(policy, cfg)             the frozen reference (None when beta == 0)
    make_sampler(policy, cfg)               the policy itself on-policy; a frozen copy when stale or rounded
    load_sampler_weights(sampler, state, p) the sampler's weights: `state` rounded to precision p (bf16 / fp16)
    concat_rollouts(rollouts, pad_id)       stack rollouts of different lengths
    rank_share(...)                         this rank's rows and the part of the full-batch loss they carry
    early_rollout_warnings(...)             "every group has the same reward", "most completions were cut"
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from .lm import Rollout
from .utils import dist_info


def make_reference(policy, cfg, ref_model=None):
    """The frozen reference policy, or None when beta == 0 (nothing is copied or kept)."""
    if cfg.beta == 0:
        return None
    ref = ref_model if ref_model is not None else copy.deepcopy(policy)
    ref.eval().requires_grad_(False)
    return ref


SAMPLER_PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""`sampler_precision` -> the dtype the sampler's weights are rounded to."""


def make_sampler(policy, cfg):
    """The model that samples, and its temperature: the policy itself on-policy, a frozen copy (loaded at
    each step by `load_sampler_weights`) when the rollouts are stale or the sampler's weights are rounded."""
    temperature = cfg.sampler_temperature if cfg.sampler_temperature is not None else cfg.temperature
    if cfg.staleness == 0 and cfg.sampler_precision == "float32":
        return policy, temperature
    return copy.deepcopy(policy).eval().requires_grad_(False), temperature


def load_sampler_weights(sampler, state: dict[str, Tensor], precision: str = "float32") -> None:
    """Load `state` into the sampler, each floating-point tensor rounded to `precision` and back to its own
    dtype: the sampler then computes in fp32 from low-precision weights (bf16 keeps 8 significant bits, a
    relative error up to 2^-8 per weight; fp16 11 bits, 2^-11), so its log-probs differ from the trainer's
    by that rounding."""
    dtype = SAMPLER_PRECISIONS[precision]
    sampler.load_state_dict({k: v.to(dtype).to(v.dtype) if v.is_floating_point() else v for k, v in state.items()})


def concat_rollouts(rollouts: list[Rollout], pad_id: int) -> Rollout:
    """Stack rollouts of different prompt/completion lengths (re-padding both sides)."""
    P = max(r.prompt_length for r in rollouts)
    L = max(r.input_ids.shape[1] - r.prompt_length for r in rollouts)

    def repad(x: Tensor, r: Rollout, value: int) -> Tensor:  # (b, p + l) -> (b, P + L)
        p, l = r.prompt_length, x.shape[1] - r.prompt_length
        return torch.nn.functional.pad(x, (P - p, L - l), value=value)

    return Rollout(input_ids=torch.cat([repad(r.input_ids, r, pad_id) for r in rollouts]),
                   attention_mask=torch.cat([repad(r.attention_mask, r, 0) for r in rollouts]),
                   completion_mask=torch.cat([repad(r.completion_mask, r, 0) for r in rollouts]),
                   prompt_length=P, ended=torch.cat([r.ended for r in rollouts]))


def rank_share(input_ids: Tensor, attn: Tensor, mask: Tensor, advantages: Tensor, loss_agg: str
               ) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    """This rank's contiguous share of the N rollout rows, and the fraction of the full batch loss
    it carries under `loss_agg`: its tokens over all tokens for "token_mean", its rows over N for the
    per-sequence means. (N, T) tensors, (N,) advantages -> the same, sliced, and the fraction
    (everything, 1.0 on one process)."""
    rank, world = dist_info()
    N = len(advantages)
    if world == 1:
        return input_ids, attn, mask, advantages, 1.0
    if N < world:
        raise ValueError(f"{N} rollouts cannot be shared by {world} ranks")
    lo, hi = rank * N // world, (rank + 1) * N // world
    share = (mask[lo:hi].sum() / mask.sum()).item() if loss_agg == "token_mean" else (hi - lo) / N
    return input_ids[lo:hi], attn[lo:hi], mask[lo:hi], advantages[lo:hi], share


EARLY_STEPS = 3
"""train_grpo checks the rollouts of its first this many steps (`early_rollout_warnings`)."""


def early_rollout_warnings(rounds: list[dict], steps: int, groups_per_round: int, group_size: int,
                           max_new_tokens: int) -> list[str]:
    """What the first steps' rollouts say about a run that cannot learn, as warning messages.

    rounds: the logged metrics of every sampling round of those `steps` steps ("frac_reward_zero_std",
    "completion/ended"), each of `groups_per_round` groups of `group_size` completions. Warns when
    >= 90% of the groups have the same reward for every completion (all advantages 0: no gradient),
    and when > 50% of the completions were cut at max_new_tokens before they ended.
    """
    n_groups = groups_per_round * len(rounds)
    n_completions = n_groups * group_size
    n_steps = f"{steps} step" + ("s" if steps != 1 else "")
    flat = round(sum(m["frac_reward_zero_std"] for m in rounds) * groups_per_round)
    cut = round(sum(1 - m["completion/ended"] for m in rounds) * groups_per_round * group_size)
    out = []
    if n_groups and flat >= 0.9 * n_groups:
        out.append(f"reward is the same for every completion in {flat} of {n_groups} groups over the first "
                   f"{n_steps}: the task is too hard or too easy for the model, or the reward cannot parse "
                   "the answers; check --max-new-tokens and the answer format")
    if n_completions and cut > 0.5 * n_completions:
        out.append(f"{cut} of {n_completions} completions ({cut / n_completions:.0%}) over the first {n_steps} "
                   f"were cut at --max-new-tokens {max_new_tokens} before they ended: raise --max-new-tokens")
    return out
