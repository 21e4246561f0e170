"""The diffusion runner: `minirlhf diffusion`, one RL method on a shipped diffusion / flow model,
its reward and KL before and after.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import check_config
from ..runs import finish, metrics_logger, show_progress


# ---------------------------------------------------------------------------------------------
# diffusion: one RL method on a shipped diffusion / flow model, reward before and after
# ---------------------------------------------------------------------------------------------


@dataclass
class DiffusionRunConfig:
    """`minirlhf diffusion`: which method, on which world; the method's other settings are its defaults."""

    method: str = "ddpo"
    """ddpo (DDPO_IS), ddpo_sf (REINFORCE), draft (DRaFT-1, reward backprop), diffusion_dpo, flow_grpo,
    mix_grpo (Flow-GRPO with MixGRPO's sliding SDE window: 4 of 20 steps)."""
    world: str = "points"
    """points (reward: land in the upper box) or digits (reward: a proxy classifier's log p(label);
    a second, gold classifier judges)."""
    iterations: int = 30
    """Sampling rounds (DDPO, Flow-GRPO) or optimizer steps (DRaFT, Diffusion-DPO)."""
    lr: float | None = None
    """AdamW learning rate (None: the method's recipe)."""
    pairs_per_label: int = 64
    """Diffusion-DPO: preference pairs sampled from the base model per label."""
    eval_per_label: int = 64
    """Samples per label for the reward / KL evaluation (the same noise before and after)."""
    eval_every: int = 5
    """Evaluate every this many iterations (0: only before and after)."""
    seed: int = 0
    """Seed of labels, noise and pairs."""

    def validate(self) -> None:
        check_config(self, at_least_1=("iterations", "pairs_per_label", "eval_per_label"), positive=("lr",),
                     non_negative=("eval_every",), choices={"method": DIFFUSION_METHODS, "world": ("points", "digits")})


# method: (model kind, config class, recipe: the settings notebook 07 uses on the points world)
DIFFUSION_METHODS = {
    "ddpo": ("ddpm", "DDPOConfig", {"lr": 3e-4}),
    "ddpo_sf": ("ddpm", "DDPOConfig", {"lr": 3e-4, "importance_sampling": False}),
    "draft": ("ddpm", "DRaFTConfig", {}),
    "diffusion_dpo": ("ddpm", "DiffusionDPOConfig", {}),
    "flow_grpo": ("flow", "FlowGRPOConfig", {}),
    "mix_grpo": ("flow", "FlowGRPOConfig", {"sde_window": 4, "window_shift_every": 6, "window_stride": 3}),
    # notebook 12's methods that aim at p* = p_base exp(r / beta) / Z (beta = 1), with the memoryless flow SDE
    "adjoint_matching": ("flow", "AdjointMatchingConfig", {"lr": 2e-3}),
    "dpok": ("flow", "DDPOConfig", {"lr": 1e-3, "eta": 2 ** 0.5, "kl_coef": 1.0, "normalize_advantages": False}),
    "reward_weighted_fm": ("flow", "RewardWeightedConfig", {}),
}


EXACT_TARGET_METHODS = ("adjoint_matching", "dpok", "reward_weighted_fm")


def diffusion_args(p):
    p.add_argument("--model", default=None, help="a diffusion checkpoint name or folder (default: "
                   "diffusion-<world>-ddpm, or -flow for flow_grpo)")


def _diffusion_rewards(world: str) -> tuple[dict, str, object]:
    """(rewards to evaluate, the task reward's name, the gold classifier or None) of a world."""
    from ..diffusion import load_diffusion_model
    from ..diffusion.rewards import box_distance_reward, box_reward, classifier_logprob_reward

    if world == "points":
        return {"box": box_reward, "distance": box_distance_reward}, "box", None
    if world != "digits":
        raise ValueError(f"world={world!r}: expected points or digits")
    proxy, gold = (load_diffusion_model(f"diffusion-digits-{k}-clf").requires_grad_(False) for k in ("proxy", "gold"))
    return {"proxy": classifier_logprob_reward(proxy), "gold": classifier_logprob_reward(gold)}, "proxy", gold


def run_diffusion(args, cfg: DiffusionRunConfig) -> dict:
    from .. import diffusion
    from ..diffusion.models import save_net
    from ..diffusion.rewards import box_distance_reward

    kind, config_name, recipe = DIFFUSION_METHODS[cfg.method]
    model_name = args.model or f"diffusion-{cfg.world}-{kind}"
    torch.manual_seed(cfg.seed)
    policy = diffusion.load_diffusion_model(model_name)
    ref = diffusion.frozen_copy(policy)
    rewards, task, gold_clf = _diffusion_rewards(cfg.world)
    # the training reward: the task's; the differentiable distance for DRaFT and the DPO pairs on points
    reward_fn = rewards[task]
    if cfg.world == "points" and cfg.method in ("draft", "diffusion_dpo", *EXACT_TARGET_METHODS):
        reward_fn = box_distance_reward

    def evaluate(net, iteration: int = 0) -> dict:
        return diffusion.evaluate_policy(net, ref, rewards, per_label=cfg.eval_per_label, gold_classifier=gold_clf)

    config_cls = getattr(diffusion, config_name)
    steps_field = "steps" if cfg.method == "diffusion_dpo" else "iterations"
    method_cfg = config_cls(**{**recipe, steps_field: cfg.iterations, "seed": cfg.seed,
                               **({"lr": cfg.lr} if cfg.lr is not None else {})})
    before = evaluate(policy)
    t0 = time.time()
    log = metrics_logger(args, "diffusion")
    hooks = dict(eval_fn=evaluate, eval_every=cfg.eval_every, progress=show_progress(args))
    if cfg.method in ("ddpo", "ddpo_sf", "dpok"):
        diffusion.train_ddpo(policy, reward_fn, method_cfg, logger=log, ref=ref, **hooks)
    elif cfg.method == "adjoint_matching":
        diffusion.train_adjoint_matching(policy, reward_fn, method_cfg, ref=ref, logger=log, **hooks)
    elif cfg.method == "reward_weighted_fm":
        diffusion.train_reward_weighted(policy, reward_fn, method_cfg, logger=log, **hooks)
    elif cfg.method == "draft":
        diffusion.train_draft(policy, reward_fn, method_cfg, logger=log, **hooks)
    elif cfg.method in ("flow_grpo", "mix_grpo"):
        diffusion.train_flow_grpo(policy, reward_fn, method_cfg, ref=ref, logger=log, **hooks)
    else:  # offline: pairs sampled once from the base model, ordered by the reward
        pairs = diffusion.make_preference_pairs(ref, reward_fn, cfg.pairs_per_label,
                                                generator=torch.Generator().manual_seed(cfg.seed))
        diffusion.train_diffusion_dpo(policy, pairs, method_cfg, ref=ref, logger=log, **hooks)
    seconds = time.time() - t0
    after = evaluate(policy)
    summary = {"method": cfg.method, "model": model_name, "world": cfg.world, "iterations": cfg.iterations,
               "config": asdict(method_cfg), "reward_name": task, "reward_before": round(before[f"reward/{task}"], 4),
               "reward": round(after[f"reward/{task}"], 4), "kl": round(after["kl"], 4),
               "eval_before": before, "eval": after, "seconds": round(seconds, 1)}
    if cfg.world == "points" and cfg.method in EXACT_TARGET_METHODS:  # the exact optimum is known: how far?
        from ..diffusion.adjoint import MEMORYLESS
        from ..diffusion.target import distance_report
        beta = getattr(method_cfg, "beta", None) or method_cfg.kl_coef
        summary.update(distance_report(policy, reward_fn, beta, MEMORYLESS["flow"], seed=cfg.seed))
        summary["distance_to_target_before"] = distance_report(ref, reward_fn, beta, MEMORYLESS["flow"],
                                                               seed=cfg.seed)["distance_to_target"]
    out = finish(args, "diffusion", log, summary, plot_keys=[f"reward/{task}", "kl", "loss"], x="iteration")
    save_net(policy, Path(out["run_dir"]) / "model", {k: v for k, v in summary.items() if k != "run_dir"})
    return out
