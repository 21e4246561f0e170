"""What each `minirlhf <method>` subcommand runs: load, train, evaluate, save, summarise.

Read top down, the command line is three layers, each importing only the ones below it:

    cli.py                      flags from the config dataclasses, the registry, main()
    commands/llm.py             sft, rm, ppo, dpo, grpo, rft     (language models)
    commands/verifiers.py       prm, rm-bench                    (process / outcome verifiers)
    commands/evaluation.py      eval                             (any model on a user's dataset)
    commands/diffusion.py       diffusion                        (diffusion and flow models)
    baselines.py                every method on the built-in worlds, one table
      commands/common.py        data flags, device, model loading, checked dataset rows, review_eval
      runs.py                   runs/<name>/: metrics.jsonl, metrics.png, summary.json, model
      evaluate.py               evaluation on the built-in worlds (accuracy, gold reward, sequence KL)
    the method files            sft.py, reward_model.py, ppo.py, dpo.py, grpo.py, prm.py, diffusion/

Each runner takes the parsed flags and the method's config dataclass and returns a summary
dict with the same keys across methods (`gold_reward` or `accuracy`, `kl`, `seconds`), which
is what `minirlhf baselines` puts in one table. The method logic itself lives in the method
files; the runners only wire data, models and evaluation around it.

Defaults use the built-in world and the shipped checkpoints; `--model` takes any causal LM by
hub name or local path, `--dataset` any JSON/JSONL/Parquet file in TRL's formats.
"""

from ..evaluate import ARITH_EVAL_ROWS, REVIEW_EVAL_PROMPTS, sequence_kl
from ..runs import finish, metrics_logger
from .common import (add_data_args, data_counts, load_lm, load_rows, preference_rows, report_dropped, review_eval,
                     run_device)
from .diffusion import (DIFFUSION_METHODS, EXACT_TARGET_METHODS, DiffusionRunConfig, diffusion_args,
                        run_diffusion)
from .llm import (dpo_args, grpo_args, ppo_args, rft_args, rm_args, run_dpo, run_grpo, run_ppo, run_rft, run_rm,
                  run_sft, sft_args)
from .evaluation import EvalConfig, eval_args, run_eval
from .verifiers import RMBenchConfig, VerifierRunConfig, prm_args, rm_bench_args, run_prm, run_rm_bench

# the names these helpers had when they lived in one commands.py, kept for code that imports them
_common, _device, _load, _load_dataset, _report_dropped, _data_counts, _preference_rows = (
    add_data_args, run_device, load_lm, load_rows, report_dropped, data_counts, preference_rows)
_metrics_logger, _finish, _review_eval = metrics_logger, finish, review_eval
