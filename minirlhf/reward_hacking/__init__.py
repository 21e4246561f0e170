"""Reward hacking: measuring it and evaluating reward models (issue 16, first part).

    rm_bench.py   a RewardBench-layout benchmark of the reviews world with a known gold ordering,
                  and `evaluate_rm_bench` for any scalar reward model
    overopt.py    the over-optimisation laws of Gao et al. (2023), their fits, and a best-of-N
                  measurement with proxies of three training-set sizes
    defences.py   ensembles, WARM, length penalty, the hacking monitor (pure functions)
    odin.py       ODIN's two-head (quality + length) reward model (Chen et al., 2024)
    defence_bench.py  best-of-N with each defence at equal KL, and early stopping on a held-out RM
    rl_bench.py   PPO against proxies and defended rewards: the RL law, equal-KL comparisons, early stopping
"""

from .overopt import OveroptConfig, bon_law, fit_bon_law, fit_rl_law, measure_bon_overoptimisation, rl_law
from .rm_bench import (SUBSETS, evaluate_rm_bench, format_table, generate_synthetic, load_reward_scorer,
                       load_rm_bench)

__all__ = ["OveroptConfig", "bon_law", "fit_bon_law", "fit_rl_law", "measure_bon_overoptimisation", "rl_law",
           "SUBSETS", "evaluate_rm_bench", "format_table", "generate_synthetic", "load_reward_scorer", "load_rm_bench"]
