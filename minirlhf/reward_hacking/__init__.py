"""Reward hacking: measuring it and evaluating reward models (issue 16, first part).

    rm_bench.py   a RewardBench-layout benchmark of the reviews world with a known gold ordering,
                  and `evaluate_rm_bench` for any scalar reward model
    overopt.py    the over-optimisation laws of Gao et al. (2023), their fits, and a best-of-N
                  measurement with proxies of three training-set sizes
"""

from .overopt import OveroptConfig, bon_law, fit_bon_law, fit_rl_law, measure_bon_overoptimisation, rl_law
from .rm_bench import (SUBSETS, evaluate_rm_bench, format_table, generate_synthetic, load_reward_scorer,
                       load_rm_bench)

__all__ = ["OveroptConfig", "bon_law", "fit_bon_law", "fit_rl_law", "measure_bon_overoptimisation", "rl_law",
           "SUBSETS", "evaluate_rm_bench", "format_table", "generate_synthetic", "load_reward_scorer", "load_rm_bench"]
