"""RL for diffusion and flow models, on two tiny worlds (labelled 2-D points, 8x8 digits).

Read in this order (the flow of one RL step: sample -> score -> advantages -> log-probs -> loss):

    worlds.py         the data: 8 labelled Gaussians; sklearn's digits; exact Gaussian velocity
    models.py         tiny DDPM / rectified-flow MLPs and classifiers, build_shipped(), loader
    samplers.py       DDIM (eta > 0) and Flow-GRPO SDE steps as Gaussians with log-probs
    rewards.py        differentiable and non-differentiable rewards, diversity metrics
    ddpo.py           DDPO_SF and DDPO_IS (Black et al., 2023)
    draft.py          reward backpropagation: DRaFT-K / AlignProp
    diffusion_dpo.py  Diffusion-DPO (Wallace et al., 2023)
    flow_grpo.py      Flow-GRPO (Liu et al., 2025)
    evaluate.py       one reward / KL / diversity evaluation for all methods
    target.py         the exact optimum p* = p_base exp(r / beta) / Z on a grid, and a distance to it
    adjoint.py        adjoint matching (Domingo-Enrich et al., 2024), the memoryless schedule
    reward_weighted.py  reward-weighted flow matching (forward-process fine-tuning)
    noise_opt.py      ReNO-style optimisation / Langevin sampling of the starting noise

DPOK is DDPO with `kl_coef > 0` (ddpo.py). The policy-gradient core (clipped_surrogate, group_advantages,
masked means, KL estimators) is `minirlhf.rl`, the same one the language-model methods use. Notebooks: 07_diffusion_rl, 12_diffusion_exact.
"""

from .adjoint import AdjointMatchingConfig, adjoint_matching_loss, lean_adjoint, train_adjoint_matching
from .ddpo import DDPOConfig, ddpo_is_loss, ddpo_sf_loss, frozen_copy, train_ddpo
from .diffusion_dpo import DiffusionDPOConfig, diffusion_dpo_loss, make_preference_pairs, train_diffusion_dpo
from .draft import DRaFTConfig, draft_loss, train_draft
from .evaluate import evaluate_policy, samples_of
from .flow_grpo import FlowGRPOConfig, flow_grpo_loss, train_flow_grpo
from .models import build_shipped, load_diffusion_model
from .noise_opt import NoiseOptConfig, optimise_noise
from .reward_weighted import RewardWeightedConfig, train_reward_weighted
from .samplers import Trajectory, gaussian_logprob, path_kl, sample, trajectory_logprobs

__all__ = ["DDPOConfig", "ddpo_is_loss", "ddpo_sf_loss", "frozen_copy", "train_ddpo", "DiffusionDPOConfig",
           "diffusion_dpo_loss", "make_preference_pairs", "train_diffusion_dpo", "DRaFTConfig", "draft_loss",
           "train_draft", "evaluate_policy", "samples_of", "FlowGRPOConfig", "flow_grpo_loss", "train_flow_grpo",
           "build_shipped", "load_diffusion_model", "Trajectory", "gaussian_logprob", "path_kl", "sample",
           "trajectory_logprobs", "AdjointMatchingConfig", "adjoint_matching_loss", "lean_adjoint",
           "train_adjoint_matching", "NoiseOptConfig", "optimise_noise", "RewardWeightedConfig", "train_reward_weighted"]
