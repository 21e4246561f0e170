"""The exercises: for each core function, the package's implementation (the solution), the random
inputs it is graded on, and the slips students commonly make.

Every reference below is the package's own function, called with the stub's signature; where
a stub asks for a little more than one package function (DPO from per-token log-probs), the
reference is the composition the trainer itself uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..diffusion.samplers import gaussian_logprob as _gaussian_logprob
from ..dpo import dpo_loss as _dpo_loss
from ..dpo import logratio_margin
from ..lm import sequence_logprob
from ..prm import aggregate_steps
from ..reward_model import bradley_terry_loss as _bradley_terry_loss
from ..rl import clipped_surrogate as _clipped_surrogate
from ..rl import gae as _gae
from ..rl import group_advantages as _group_advantages
from ..rl import first_copies as _first_copies
from ..rl import kl_k3 as _kl_k3
from ..rl import positive_advantages as _positive_advantages
from .grader import Case, Exercise, Slip


def _randn(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


def _block_mask(g, B: int, T: int, min_len: int = 1, lead: bool = True) -> Tensor:
    """(B, T) rows of 0...0 1...1 0...0: a prompt (left), the completion (ones), padding (right)."""
    mask = torch.zeros(B, T)
    for b in range(B):
        start = int(torch.randint(0, T // 3 + 1, (1,), generator=g)) if lead else 0
        length = int(torch.randint(min_len, T - start + 1, (1,), generator=g))
        mask[b, start:start + length] = 1
    return mask


# ---------------------------------------------------------------------------------------------
# 1. Bradley-Terry loss (reward model)
# ---------------------------------------------------------------------------------------------


def _bt_cases(g) -> list[Case]:
    cases = [Case((_randn(g, B, scale=s), _randn(g, B, scale=s)), note=f"B={B}, rewards of scale {s}")
             for B, s in ((6, 1.0), (8, 3.0))]
    rc = torch.tensor([120.0, -120.0, 0.5, -60.0])  # large margins both ways: is it stable?
    rr = torch.tensor([0.0, 0.0, -0.5, 40.0])
    cases.append(Case((rc, rr), note="B=4, margins of +-120: numerically stable?"))
    return cases


BRADLEY_TERRY = Exercise(
    name="bradley_terry_loss", title="the reward model's pairwise loss, one value per pair",
    reference=lambda rc, rr: _bradley_terry_loss(rc, rr),
    solution="minirlhf.reward_model.bradley_terry_loss", cases=_bt_cases, outputs=("loss",), grad_args=(0, 1),
    slips=[
        Slip("chosen and rejected swapped", lambda rc, rr: -F.logsigmoid(rr - rc),
             "the loss is -log sigmoid(r_chosen - r_rejected); with the two swapped it trains the model "
             "to prefer the rejected answer"),
        Slip("sign flipped", lambda rc, rr: F.logsigmoid(rc - rr),
             "log sigmoid(.) is a log-likelihood (<= 0); the loss is its negative"),
        Slip("mean over the batch", lambda rc, rr: -F.logsigmoid(rc - rr).mean(),
             "return the per-pair losses (B,); the trainer takes the mean"),
        Slip("log(sigmoid(x)) underflows", lambda rc, rr: -torch.log(torch.sigmoid(rc - rr)),
             "sigmoid(-120) rounds to 0 in float32 and log(0) = -inf; F.logsigmoid computes the same "
             "value stably"),
        Slip("probability instead of log-probability", lambda rc, rr: -torch.sigmoid(rc - rr),
             "the loss is the negative LOG of sigmoid(r_chosen - r_rejected)"),
    ])


# ---------------------------------------------------------------------------------------------
# 2. GAE (PPO)
# ---------------------------------------------------------------------------------------------


def _gae_variant(r, v, m, gamma=1.0, lam=0.95, ignore_mask=False, cross_end=False, no_lam=False,
                 no_gamma_delta=False, returns_are_adv=False, delta_sign=1.0, forward=False):
    """GAE with one deliberate mistake switched on (all off: the right answer)."""
    B, T = r.shape
    mask = torch.ones_like(m) if ignore_mask else m
    end = torch.zeros(B, 1)
    alive = torch.cat([torch.ones(B, T - 1) if cross_end else mask[:, 1:], end], 1)  # (B, T): mask[:, t+1]
    next_v = torch.cat([v[:, 1:], end], 1) * alive  # (B, T): V_{t+1}, 0 after the end
    delta = delta_sign * (r + (1.0 if no_gamma_delta else gamma) * next_v - v)  # (B, T)
    k = gamma * (1.0 if no_lam else lam)
    adv, last = torch.zeros_like(r), torch.zeros(B)
    for t in (range(T) if forward else reversed(range(T))):
        carry = (mask[:, t - 1] if t > 0 else end[:, 0]) if forward else alive[:, t]
        last = delta[:, t] + k * carry * last
        adv[:, t] = last
    adv = adv * mask
    return adv, (adv if returns_are_adv else (adv + v) * mask)


def _gae_cases(g) -> list[Case]:
    cases = []
    for B, T, gamma, lam in ((3, 7, 0.9, 0.8), (4, 9, 0.99, 0.95), (3, 6, 1.0, 0.95)):
        mask = _block_mask(g, B, T, min_len=2)
        r = _randn(g, B, T)  # padding holds nonzero garbage too: it must not leak in
        v = _randn(g, B, T)
        cases.append(Case((r, v, mask), dict(gamma=gamma, lam=lam), note=f"B={B}, T={T}, gamma={gamma}, lam={lam}"))
    return cases


def _gae_slip(**flags):
    return lambda r, v, m, gamma, lam: _gae_variant(r, v, m, gamma, lam, **flags)


GAE = Exercise(
    name="gae", title="generalised advantage estimation: advantages and returns over a masked batch",
    reference=lambda r, v, m, gamma, lam: _gae(r, v, m, gamma=gamma, lam=lam),
    solution="minirlhf.rl.gae (and its Triton twin minirlhf.kernels.gae)", cases=_gae_cases,
    outputs=("advantages", "returns"),
    slips=[
        Slip("missing mask", _gae_slip(ignore_mask=True),
             "padding positions are not part of the episode: the outputs must be 0 there and nothing may flow "
             "from them into real tokens"),
        Slip("the episode end is not cut", _gae_slip(cross_end=True),
             "at the last real token V_{t+1} = 0 and A_{t+1} = 0 (multiply by mask[:, t+1]); otherwise the "
             "advantage bootstraps from padding"),
        Slip("lam forgotten", _gae_slip(no_lam=True),
             "A_t = delta_t + gamma * lam * A_{t+1}: without lam it is the Monte-Carlo return minus V"),
        Slip("gamma forgotten in the TD error", _gae_slip(no_gamma_delta=True),
             "delta_t = r_t + gamma * V_{t+1} - V_t"),
        Slip("returns are the advantages", _gae_slip(returns_are_adv=True),
             "the value target is returns = advantages + values"),
        Slip("sign flipped", _gae_slip(delta_sign=-1.0),
             "delta_t = r_t + gamma * V_{t+1} - V_t, not V_t - r_t - gamma * V_{t+1}"),
        Slip("the loop runs forwards", _gae_slip(forward=True),
             "A_t depends on A_{t+1}: loop over t from the last position down to the first"),
    ])


# ---------------------------------------------------------------------------------------------
# 3. PPO's clipped surrogate
# ---------------------------------------------------------------------------------------------


def _surrogate_variant(logp, old, adv, clip_low=0.2, clip_high=None, reduce=torch.maximum, sign=1.0,
                       ratio_fn=None, only_clipped=False, symmetric=False):
    clip_high = clip_low if (clip_high is None or symmetric) else clip_high
    ratio = torch.exp(logp - old) if ratio_fn is None else ratio_fn(logp, old)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    loss = clipped if only_clipped else reduce(unclipped, clipped)
    return sign * loss, ratio


def _surrogate_cases(g) -> list[Case]:
    cases = []
    for B, T, clip_low, clip_high in ((4, 6, 0.2, None), (6, 10, 0.2, 0.4), (5, 5, 0.1, None)):
        old = -torch.rand(B, T, generator=g) * 3
        logp = old + _randn(g, B, T, scale=0.4)  # ratios from ~0.4 to ~2.5: both sides of the clip
        adv = _randn(g, B, T)
        kw = dict(clip_low=clip_low) if clip_high is None else dict(clip_low=clip_low, clip_high=clip_high)
        cases.append(Case((logp, old, adv), kw, note=f"B={B}, T={T}, " + ", ".join(f"{k}={v}" for k, v in kw.items())))
    return cases


def _surrogate_slip(**flags):
    return lambda logp, old, adv, clip_low=0.2, clip_high=None: _surrogate_variant(logp, old, adv, clip_low,
                                                                                   clip_high, **flags)


CLIPPED_SURROGATE = Exercise(
    name="clipped_surrogate", title="PPO's clipped surrogate, as a per-token loss to minimise",
    reference=lambda logp, old, adv, clip_low=0.2, clip_high=None: _clipped_surrogate(logp, old, adv, clip_low,
                                                                                      clip_high),
    solution="minirlhf.rl.clipped_surrogate", cases=_surrogate_cases, outputs=("loss", "ratio"), grad_args=(0,),
    slips=[
        Slip("min instead of max", _surrogate_slip(reduce=torch.minimum),
             "the objective takes the min of the two terms (the pessimistic bound); the LOSS is its negative, so "
             "it takes the max of -A*ratio and -A*clip(ratio)"),
        Slip("sign flipped", _surrogate_slip(reduce=torch.minimum, sign=-1.0),
             "you returned the objective to maximise; return the loss to minimise, its negative"),
        Slip("ratio without exp", _surrogate_slip(ratio_fn=lambda lp, o: lp - o),
             "ratio = pi / pi_old = exp(logp - old_logp)"),
        Slip("ratio upside down", _surrogate_slip(ratio_fn=lambda lp, o: torch.exp(o - lp)),
             "ratio = pi / pi_old = exp(logp - old_logp), the new policy on top"),
        Slip("only the clipped term", _surrogate_slip(only_clipped=True),
             "keep both terms and take the max: without the unclipped one, the gradient vanishes even where "
             "the update makes things worse"),
        Slip("clip_high ignored", _surrogate_slip(symmetric=True),
             "the upper bound is 1 + clip_high when it is given (DAPO's clip-higher), 1 + clip_low otherwise"),
    ])


# ---------------------------------------------------------------------------------------------
# 4. DPO loss from per-token log-probs
# ---------------------------------------------------------------------------------------------


def _dpo_variant(pc, pr, rc, rr, mc, mr, beta, use_beta=True, swap=False, sign=-1.0, use_ref=True,
                 average=False, use_mask=True, batch_mean=False):
    if not use_mask:
        mc, mr = torch.ones_like(mc), torch.ones_like(mr)
    s = lambda x, m: sequence_logprob(x, m, average=average)  # noqa: E731
    h = (s(pc, mc) - (s(rc, mc) if use_ref else 0)) - (s(pr, mr) - (s(rr, mr) if use_ref else 0))
    if swap:
        h = -h
    loss = sign * F.logsigmoid((beta if use_beta else 1.0) * h)
    return loss.mean() if batch_mean else loss


def _dpo_reference(pc, pr, rc, rr, mc, mr, beta):
    h = logratio_margin(sequence_logprob(pc, mc), sequence_logprob(pr, mr),
                        sequence_logprob(rc, mc), sequence_logprob(rr, mr))  # (B,)
    return _dpo_loss(h, beta)


def _dpo_cases(g) -> list[Case]:
    cases = []
    for B, T, beta in ((5, 8, 0.1), (4, 6, 0.5), (6, 10, 0.2)):
        mc, mr = _block_mask(g, B, T, min_len=2), _block_mask(g, B, T, min_len=2)
        # log-probs everywhere, padding included (garbage there: the mask must drop it)
        ref_c, ref_r = -torch.rand(B, T, generator=g) * 3, -torch.rand(B, T, generator=g) * 3
        pol_c, pol_r = ref_c + _randn(g, B, T, scale=0.5), ref_r + _randn(g, B, T, scale=0.5)
        cases.append(Case((pol_c, pol_r, ref_c, ref_r, mc, mr), dict(beta=beta), note=f"B={B}, T={T}, beta={beta}"))
    return cases


def _dpo_slip(**flags):
    return lambda pc, pr, rc, rr, mc, mr, beta: _dpo_variant(pc, pr, rc, rr, mc, mr, beta, **flags)


DPO = Exercise(
    name="dpo_loss", title="the DPO loss of each pair, from per-token log-probs and masks",
    reference=_dpo_reference,
    solution="minirlhf.lm.sequence_logprob, then minirlhf.dpo.logratio_margin and minirlhf.dpo.dpo_loss",
    cases=_dpo_cases, outputs=("loss",), grad_args=(0, 1),
    slips=[
        Slip("beta forgotten", _dpo_slip(use_beta=False),
             "the loss is -log sigmoid(beta * h); beta sets how far the policy may move from the reference"),
        Slip("chosen and rejected swapped", _dpo_slip(swap=True),
             "h = [log pi(y_w) - log ref(y_w)] - [log pi(y_l) - log ref(y_l)], chosen first (or policy and "
             "reference are swapped, which flips h the same way)"),
        Slip("sign flipped", _dpo_slip(sign=1.0),
             "log sigmoid(beta * h) is a log-likelihood (<= 0); the loss is its negative"),
        Slip("reference forgotten", _dpo_slip(use_ref=False),
             "each side is a log-RATIO: log pi(y) - log pi_ref(y)"),
        Slip("mean instead of sum over tokens", _dpo_slip(average=True),
             "a sequence's log-prob is the SUM of its tokens' log-probs (the mean is SimPO's length-normalised "
             "reward, a different method)"),
        Slip("missing mask", _dpo_slip(use_mask=False),
             "sum only the response tokens (mask = 1): prompt and padding positions are not part of y"),
        Slip("mean over the batch", _dpo_slip(batch_mean=True),
             "return one loss per pair (B,); the trainer takes the mean"),
    ])


# ---------------------------------------------------------------------------------------------
# 5. GRPO's group advantages
# ---------------------------------------------------------------------------------------------


def _group_cases(g) -> list[Case]:
    binary = (torch.rand(4, 6, generator=g) < 0.5).float()
    binary[1] = 1.0  # a group where every completion is right: advantage exactly 0, never NaN
    cont = _randn(g, 3, 8, scale=2.0) + 1.0
    cont[2] = 0.7
    return [Case((binary,), note="B=4 prompts x G=6 completions, 0/1 rewards, one group all 1"),
            Case((cont,), note="B=3 x G=8, real-valued rewards, one group constant"),
            Case((cont,), dict(scale_by_std=False), note="B=3 x G=8, scale_by_std=False (Dr. GRPO)")]


def _group_variant(r, scale_by_std=True, eps=1e-4, dim=1, whole_batch=False, unbiased=True, use_eps=True,
                   centre=True, sign=1.0, ignore_flag=False):
    if whole_batch:
        mean, std = r.mean(), r.std(unbiased=unbiased)
    else:
        mean, std = r.mean(dim, keepdim=True), r.std(dim, keepdim=True, unbiased=unbiased)
    x = sign * (r - mean) if centre else r
    if not scale_by_std and not ignore_flag:
        return x
    return x / (std + eps) if use_eps else x / std


def _group_slip(**flags):
    return lambda r, scale_by_std=True, eps=1e-4: _group_variant(r, scale_by_std, eps, **flags)


GROUP_ADVANTAGES = Exercise(
    name="group_advantages", title="GRPO's group-relative advantages (and Dr. GRPO's unscaled ones)",
    reference=lambda r, scale_by_std=True, eps=1e-4: _group_advantages(r, scale_by_std, eps),
    solution="minirlhf.rl.group_advantages", cases=_group_cases, outputs=("advantages",),
    slips=[
        Slip("normalised over the whole batch", _group_slip(whole_batch=True),
             "each prompt's completions form a group: mean and std over dim 1 (G), one per row"),
        Slip("groups along the wrong dimension", _group_slip(dim=0),
             "rewards is (B prompts, G completions): the group is a row, so reduce over dim=1"),
        Slip("population std", _group_slip(unbiased=False),
             "GRPO uses the sample std (torch.std's default, dividing by G - 1), not unbiased=False"),
        Slip("eps forgotten", _group_slip(use_eps=False),
             "a group whose rewards are all equal has std 0: (r - mean) / (std + eps) makes it 0, not 0/0 = nan"),
        Slip("not centred", _group_slip(centre=False),
             "subtract the group mean first: A_i = (r_i - mean) / (std + eps)"),
        Slip("sign flipped", _group_slip(sign=-1.0), "A_i = r_i - mean, not mean - r_i"),
        Slip("scale_by_std ignored", _group_slip(ignore_flag=True),
             "with scale_by_std=False (Dr. GRPO) return r - mean, without dividing"),
    ])


# ---------------------------------------------------------------------------------------------
# 6. The k3 KL estimator
# ---------------------------------------------------------------------------------------------


def _k3_cases(g) -> list[Case]:
    cases = []
    for B, T, s in ((4, 7, 0.5), (3, 5, 1.5)):
        logp = -torch.rand(B, T, generator=g) * 4
        cases.append(Case((logp, logp + _randn(g, B, T, scale=s)), note=f"B={B}, T={T}, |log-ratio| ~ {s}"))
    return cases


KL_K3 = Exercise(
    name="kl_k3", title="Schulman's k3 estimator of KL(pi || pi_ref), per token",
    reference=lambda logp, ref: _kl_k3(logp, ref), solution="minirlhf.rl.kl_k3 (k1, k2 beside it)",
    cases=_k3_cases, outputs=("k3",), grad_args=(0,),
    slips=[
        Slip("ratio upside down", lambda lp, ref: torch.exp(lp - ref) - 1 - (lp - ref),
             "r = pi_ref / pi = exp(logp_ref - logp): samples come from pi, so pi is underneath (this one "
             "estimates KL(pi_ref || pi))"),
        Slip("k1 instead of k3", lambda lp, ref: lp - ref,
             "that is k1 = log pi - log pi_ref; k3 = r - 1 - log r with r = pi_ref / pi"),
        Slip("k2 instead of k3", lambda lp, ref: 0.5 * (lp - ref) ** 2, "that is k2; k3 = r - 1 - log r"),
        Slip("sign of log r flipped", lambda lp, ref: torch.exp(ref - lp) - 1 + (ref - lp),
             "k3 = r - 1 - log r (minus log r: that makes it >= 0)"),
        Slip("the -1 forgotten", lambda lp, ref: torch.exp(ref - lp) - (ref - lp),
             "k3 = r - 1 - log r; the -1 makes it 0 when the two policies agree"),
        Slip("summed over tokens", lambda lp, ref: _kl_k3(lp, ref).sum(-1),
             "return the per-token estimate (same shape as logp); summing is the caller's choice"),
    ])


# ---------------------------------------------------------------------------------------------
# 7. PRM min aggregation
# ---------------------------------------------------------------------------------------------


def _prm_cases(g) -> list[Case]:
    cases = []
    for B, S in ((8, 6), (6, 4)):
        lengths = torch.randint(1, S + 1, (B,), generator=g)
        lengths[0] = 0  # a solution with no steps scores 0
        lengths[1] = S - 1  # one that is padded
        mask = (torch.arange(S)[None] < lengths[:, None]).float()  # (B, S)
        scores = torch.sigmoid(_randn(g, B, S, scale=2.0)) * 0.9 + 0.1  # real steps in (0.1, 1)
        scores = torch.where(mask.bool(), scores, torch.rand(B, S, generator=g) * 0.05)  # low garbage in padding
        cases.append(Case((scores, mask), note=f"B={B} solutions, up to S={S} steps"))
    return cases


def _prm_min_masked(s, m, fill):
    return s.masked_fill(~m.bool(), fill).min(-1).values


PRM_MIN = Exercise(
    name="prm_min", title="a solution's PRM score: the lowest step score (0 if it has no step)",
    reference=lambda s, m: aggregate_steps(s, m, "min"), solution='minirlhf.prm.aggregate_steps(scores, mask, "min")',
    cases=_prm_cases, outputs=("score",),
    slips=[
        Slip("missing mask", lambda s, m: s.min(-1).values,
             "padding positions are not steps: take the min over the masked positions only (fill the rest with "
             "+inf first)"),
        Slip("padding filled with 0", lambda s, m: _prm_min_masked(s, m, 0.0),
             "a padded position filled with 0 always wins the min; fill it with +inf"),
        Slip("no-step solution not 0", lambda s, m: _prm_min_masked(s, m, float("inf")),
             "a row without any step would score +inf (the min of nothing); give it 0"),
        Slip("max instead of min", lambda s, m: torch.where(m.bool().any(-1), _prm_min_masked(-s, m, 1.0).neg(), 0.0),
             "a chain is as good as its weakest step: the min, not the max"),
        Slip("product instead of min", lambda s, m: aggregate_steps(s, m, "product"),
             "that is the product aggregation (Lightman et al.); this exercise asks for the min"),
        Slip("mean instead of min", lambda s, m: aggregate_steps(s, m, "mean"),
             "that is the mean of the step scores; this exercise asks for the min"),
        Slip("last step instead of min", lambda s, m: aggregate_steps(s, m, "last"),
             "that is the last step's score (close to an ORM); this exercise asks for the min"),
    ])


# ---------------------------------------------------------------------------------------------
# 8. The Gaussian log-prob of one denoising step (DDPO)
# ---------------------------------------------------------------------------------------------


def _gauss_variant(x, mean, std, var_as_std=False, no_const=False, log_std_once=False, no_sum=False,
                   mean_over_d=False, sign=1.0, no_half_2pi=False):
    """log N(x; mean, std^2 I) with one deliberate mistake switched on."""
    D = x.shape[-1]
    var = std if var_as_std else std ** 2  # (...)
    quad = -(x - mean) ** 2 / (2 * var[..., None])  # (..., D)
    half_log_2pi = (1.0 if no_half_2pi else 0.5) * math.log(2 * math.pi)
    if no_sum:
        return sign * (quad - torch.log(std)[..., None] - half_log_2pi)
    n = 1 if mean_over_d else D
    total = quad.mean(-1) if mean_over_d else quad.sum(-1)  # (...)
    if not no_const:
        total = total - (1 if log_std_once else n) * torch.log(std) - n * half_log_2pi
    return sign * total


def _gauss_cases(g) -> list[Case]:
    cases = []
    for shape, D in (((6,), 2), ((3, 4), 3), ((5,), 1)):
        mean = _randn(g, *shape, D)
        std = torch.rand(*shape, generator=g) * 0.9 + 0.1  # (...,)
        x = mean + std[..., None] * _randn(g, *shape, D)
        cases.append(Case((x, mean, std), note=f"x of shape {tuple(x.shape)} (D={D}), std of shape {tuple(std.shape)}"))
    return cases


GAUSSIAN_LOGPROB = Exercise(
    name="gaussian_logprob", title="log N(x; mean, std^2 I) of one denoising step, summed over dimensions (DDPO)",
    reference=lambda x, mean, std: _gaussian_logprob(x, mean, std),
    solution="minirlhf.diffusion.samplers.gaussian_logprob", cases=_gauss_cases, outputs=("logprob",), grad_args=(1,),
    slips=[
        Slip("normalising constant dropped", lambda x, m, s: _gauss_variant(x, m, s, no_const=True),
             "log N includes -D log std - D/2 log(2 pi); the ratio of two policies with the same std cancels "
             "it, but the log-prob itself does not"),
        Slip("std where the variance belongs", lambda x, m, s: _gauss_variant(x, m, s, var_as_std=True),
             "the quadratic term is -|x - mean|^2 / (2 std^2)"),
        Slip("log std counted once", lambda x, m, s: _gauss_variant(x, m, s, log_std_once=True),
             "each of the D dimensions contributes -log std: -D log std in all"),
        Slip("not summed over dimensions", lambda x, m, s: _gauss_variant(x, m, s, no_sum=True),
             "the step's log-prob is the sum over the D independent dimensions (shape (...,), not (..., D))"),
        Slip("mean over dimensions", lambda x, m, s: _gauss_variant(x, m, s, mean_over_d=True),
             "independent dimensions multiply, so their log-probs add: sum over D, not mean"),
        Slip("sign flipped", lambda x, m, s: _gauss_variant(x, m, s, sign=-1.0),
             "a log-density is -|x - mean|^2 / (2 std^2) - ...: larger where x is near the mean"),
        Slip("log(2 pi) without its 1/2", lambda x, m, s: _gauss_variant(x, m, s, no_half_2pi=True),
             "the constant is -D/2 log(2 pi) (from the sqrt in 1/sqrt(2 pi std^2))"),
    ])


# ---------------------------------------------------------------------------------------------
# 9. RAFT++'s positive-only advantages (notebook 11, section 0b)
# ---------------------------------------------------------------------------------------------


def _positive_cases(g) -> list[Case]:
    B, G, T = 4, 6, 5
    comps = torch.randint(0, 3, (B, G, T), generator=g)
    comps[0, 3] = comps[0, 1]  # duplicates inside a group ...
    comps[0, 5] = comps[0, 1]
    comps[2, 4] = comps[2, 0]
    comps[3, 2] = comps[1, 0]  # ... and the same completion in two different groups
    binary = (torch.rand(B, G, generator=g) < 0.6).float()
    binary[0, [1, 3, 5]] = 1.0
    binary[2, [0, 4]] = 1.0
    binary[1, 0] = binary[3, 2] = 1.0
    graded = binary * 0.8 + 0.1  # real-valued: 0.9 correct, 0.1 wrong ...
    graded[1, 1], graded[3, 0] = 0.3, 0.5  # ... with two below the threshold (0.5 is not above it)
    return [Case((comps, binary), note=f"B={B} x G={G} completions of {T} tokens, 0/1 rewards, repeats in groups 0 and 2"),
            Case((comps, graded), note="the same completions, rewards in (0, 1): correct means > 0.5"),
            Case((comps, binary), dict(distinct=False), note="distinct=False: every correct copy counts")]


def _positive_variant(comps, rewards, distinct=True, threshold=0.5, dedup=True, last=False, batch=False,
                      negatives=0.0):
    correct = rewards > threshold
    if not (distinct and dedup):
        keep = correct
    elif batch:  # one set of seen completions for the whole batch
        seen, keep = set(), torch.zeros_like(correct)
        for b in range(comps.shape[0]):
            for i in range(comps.shape[1]):
                key = tuple(comps[b, i].tolist())
                if correct[b, i] and key not in seen:
                    seen.add(key)
                    keep[b, i] = True
    else:
        first = _first_copies(comps.flip(1)).flip(1) if last else _first_copies(comps)
        keep = correct & first
    return torch.where(keep, 1.0, torch.where(correct, 0.0, negatives))


def _positive_slip(**flags):
    return lambda c, r, distinct=True: _positive_variant(c, r, distinct, **flags)


POSITIVE_ADVANTAGES = Exercise(
    name="positive_advantages", title="RAFT++'s advantages: 1 on each distinct correct completion of a group, else 0",
    reference=lambda c, r, distinct=True: _positive_advantages(r > 0.5, _first_copies(c) if distinct else None),
    solution="minirlhf.rl.positive_advantages with minirlhf.rl.first_copies", cases=_positive_cases,
    outputs=("advantages",),
    slips=[
        Slip("duplicates not removed", _positive_slip(dedup=False),
             "credit each distinct correct completion of a prompt once: a copy of an earlier one of its group gets 0"),
        Slip("the last copy kept", _positive_slip(last=True),
             "keep the FIRST copy of each distinct completion (the earliest index in its group), as RFT's dedup does"),
        Slip("duplicates removed across the whole batch", _positive_slip(batch=True),
             "deduplicate within each prompt's group: the same completion for two prompts is two samples"),
        Slip("wrong completions pushed down", _positive_slip(negatives=-1.0),
             "RAFT++ gives wrong completions advantage 0 (they leave the loss), not -1: there is no baseline"),
        Slip("any positive reward counts", _positive_slip(threshold=0.0),
             "a completion is correct when its reward is above 0.5 (binary rewards: 1), not merely above 0"),
        Slip("distinct=False ignored", lambda c, r, distinct=True: _positive_variant(c, r, True),
             "with distinct=False every correct completion gets 1, copies included"),
    ])


EXERCISES: dict[str, Exercise] = {e.name: e for e in (
    BRADLEY_TERRY, GAE, CLIPPED_SURROGATE, DPO, GROUP_ADVANTAGES, KL_K3, PRM_MIN, GAUSSIAN_LOGPROB, POSITIVE_ADVANTAGES)}
