"""Time one DPO step and one GRPO step of minirlhf against TRL on the same tiny model, batch and lengths.

Both libraries train the same randomly initialised Llama (about 1.8M parameters, the project's
100-token character tokenizer) from the same weights, in the same process, on the same
fixed-length rows, so every step does the same arithmetic. Runs alternate A/B/A/B (minirlhf,
TRL, minirlhf, TRL, ...): each run builds its trainer (not timed), trains `--steps` steps, and
the time of step k is the wall time between the ends of steps k-1 and k inside the library's own
training loop, so it counts everything the loop does per step (batching and tokenising,
forward, backward, clipping, the optimizer, logging bookkeeping). The first `--warmup` steps of
each run are dropped. The table gives, over all kept steps of all runs, the median and the
interquartile range (IQR) in milliseconds, and the ratio of the medians minirlhf / TRL
(below 1: minirlhf is faster).

Scope of a step, identical on both sides:

* DPO: sigmoid loss (beta 0.1), `--pairs` pairs per step; chosen and rejected in one forward pass
  of the policy, then backward, gradient clipping at norm 1, AdamW. The reference log-probs, the
  same way on both sides, two rows of the table (`--ref` picks one):
  "per-step": a no-gradient forward pass of a frozen copy in every step (TRL's default,
  `precompute_ref_log_probs=False`; minirlhf `precompute_ref=False`);
  "precomputed": computed for the whole dataset before training, not timed (TRL
  `precompute_ref_log_probs=True`; minirlhf's default `precompute_ref=True`).
* GRPO: `--prompts` prompts x `--generations` completions sampled at temperature 1 with a KV cache
  (minirlhf's `lm.sample`, TRL's `model.generate`), `--new-tokens` new tokens (a random model
  rarely emits EOS, so every step samples the full length), one Python reward function, group
  advantages scaled by the std, one update per batch of rollouts (mu = 1, TRL's
  `num_iterations=1`), token-mean loss aggregation (TRL's default "dapo"; minirlhf
  `loss_agg="token_mean"`), beta = 0 (no reference model: both libraries' default), clipping
  at norm 1, AdamW.

One difference of work, on purpose: minirlhf runs each distinct prompt through the model once
where rows repeat it (DPO's chosen and rejected, GRPO's G completions, in the training passes
and in the sampler's first pass: `lm.lm_logits`), with the same numbers within float rounding;
TRL runs every row in full. `--share-prompts off` turns that off to measure it.

Everything in float32 on the CPU with `--threads` torch threads (default 1: steadier on a shared
machine; set 2 to use both cores of a 2-core laptop), no gradient checkpointing, no bf16 (TRL's
DPO turns both on by default; they are turned off here for both). Logging: minirlhf logs every
step (its per-step timestamps come from its logger), TRL every 10**6 steps (its timestamps come
from a `TrainerCallback.on_step_end`).

Run (about 2 minutes on an idle 2-core CPU; about 8 under a heavy load):

    pip install -e '.[bench]'          # TRL
    python benchmarks/bench_steps.py   # both methods, 1 thread
    python benchmarks/bench_steps.py --only grpo --rounds 2 --steps 5   # a quick look

Without TRL installed the script times minirlhf alone and says so.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import partial

import datasets
import torch
from transformers import LlamaForCausalLM

from minirlhf.dpo import DPOConfig as MiniDPOConfig, train_dpo
from minirlhf.grpo import GRPOConfig as MiniGRPOConfig, train_grpo
from minirlhf.models import count_parameters, load_tokenizer, tiny_llama_config
from minirlhf.utils import MetricsLogger


@dataclass
class Args:
    """Command-line arguments (see --help)."""

    only: str = "both"
    """"dpo", "grpo" or "both"."""
    rounds: int = 4
    """A/B rounds: each round runs minirlhf once and TRL once."""
    steps: int = 8
    """Training steps per run (the first `warmup` are dropped)."""
    warmup: int = 2
    """Steps dropped at the start of each run (allocator, first-call costs)."""
    threads: int = 1
    """torch threads for both libraries."""
    ref: str = "both"
    """DPO reference log-probs: "per-step" (a no-grad forward pass every step), "precomputed" or "both"."""
    pairs: int = 8
    """DPO: preference pairs per step (the forward pass sees twice as many sequences)."""
    prompt_len: int = 16
    """Prompt length in tokens (DPO and GRPO)."""
    completion_len: int = 48
    """DPO: chosen and rejected length in tokens, EOS included."""
    prompts: int = 4
    """GRPO: prompts per step."""
    generations: int = 8
    """GRPO: completions per prompt (G)."""
    new_tokens: int = 32
    """GRPO: tokens sampled per completion."""
    hidden: int = 128
    """Model width (with 7 layers and 4x MLP: 1.85M parameters)."""
    layers: int = 7
    """Model depth."""
    seed: int = 0
    """Seed of the weights and the data."""
    share_prompts: str = "on"
    """"off": minirlhf without running each distinct prompt once (`lm.lm_logits`, `lm.sample`), to
    measure what that saves (for development: the record is "on", minirlhf as it ships)."""
    clock: str = "wall"
    """"wall" (time.perf_counter: what the user waits) or "cpu" (time.process_time: this process's CPU
    time, much less disturbed by other programs on a busy machine; for development, not the record)."""


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter  # set from --clock in main()


# ---------------------------------------------------------------------------------------------
# The shared model, data and reward
# ---------------------------------------------------------------------------------------------


def build_model(tok, args: Args) -> LlamaForCausalLM:
    torch.manual_seed(args.seed)
    cfg = tiny_llama_config(len(tok), hidden_size=args.hidden, num_layers=args.layers,
                            intermediate_size=4 * args.hidden, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval()


LETTERS = "abcdefghijklmnopqrstuvwxyz "


def random_text(g: torch.Generator, n: int) -> str:
    """n characters, so n tokens of the character tokenizer."""
    return "".join(LETTERS[i] for i in torch.randint(len(LETTERS), (n,), generator=g).tolist())


def preference_rows(args: Args, n: int = 64) -> list[dict]:
    """Fixed-length rows: every batch has the same shape in both libraries (EOS is appended by both)."""
    g = torch.Generator().manual_seed(args.seed)
    return [{"prompt": random_text(g, args.prompt_len), "chosen": random_text(g, args.completion_len - 1),
             "rejected": random_text(g, args.completion_len - 1)} for _ in range(n)]


def prompt_rows(args: Args, n: int = 64) -> list[str]:
    g = torch.Generator().manual_seed(args.seed + 1)
    return [random_text(g, args.prompt_len) for _ in range(n)]


def vowel_reward(prompts, completions, **kwargs) -> list[float]:
    """A verifiable reward with some spread on random text: the fraction of vowels."""
    return [sum(c in "aeiou" for c in text) / max(1, len(text)) for text in completions]


# ---------------------------------------------------------------------------------------------
# One timed run of each library: returns the per-step times in seconds (warm-up dropped)
# ---------------------------------------------------------------------------------------------


class StampLogger(MetricsLogger):
    """minirlhf's logger with a wall-clock stamp at every logged row (one row per step here)."""

    def __init__(self):
        super().__init__()
        self.stamps: list[float] = []

    def log(self, row):
        self.stamps.append(clock())
        return super().log(row)


def intervals(stamps: list[float], warmup: int) -> list[float]:
    """Step k takes stamps[k] - stamps[k-1]; steps 1..warmup are dropped (step 0 has no start)."""
    return [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]


def mini_dpo(model, tok, rows, args: Args, ref: str) -> list[float]:
    policy, ref_model = copy.deepcopy(model), copy.deepcopy(model)
    cfg = MiniDPOConfig(loss_type="dpo", beta=0.1, lr=1e-4, warmup_steps=0, batch_size=args.pairs,
                        steps=args.steps + 1, log_every=1, precompute_ref=ref == "precomputed",
                        max_length=args.prompt_len + args.completion_len, seed=args.seed)
    logger = StampLogger()
    train_dpo(policy, tok, rows, cfg, ref_model=ref_model, logger=logger)
    return intervals(logger.stamps, args.warmup)


def mini_grpo(model, tok, prompts, args: Args) -> list[float]:
    policy = copy.deepcopy(model)
    cfg = MiniGRPOConfig(steps=args.steps + 1, prompts_per_step=args.prompts, group_size=args.generations,
                         mu=1, lr=1e-4, warmup_steps=0, temperature=1.0, max_new_tokens=args.new_tokens,
                         beta=0.0, loss_agg="token_mean", eval_every=0, seed=args.seed)
    logger = StampLogger()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "completions cut at max_new_tokens": intended here
        train_grpo(policy, tok, prompts, [vowel_reward], cfg, logger=logger)
    return intervals(logger.stamps, args.warmup)


def trl_common(out_dir: str, args: Args) -> dict:
    return dict(output_dir=out_dir, max_steps=args.steps + 1, learning_rate=1e-4, lr_scheduler_type="constant",
                warmup_steps=0, max_grad_norm=1.0, logging_steps=10**6, save_strategy="no", report_to="none",
                disable_tqdm=True, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
                dataloader_num_workers=0, seed=args.seed)


def trl_stamp_callback():
    from transformers import TrainerCallback

    class Stamps(TrainerCallback):
        def __init__(self):
            self.stamps: list[float] = []

        def on_step_end(self, *a, **k):
            self.stamps.append(clock())

    return Stamps()


def trl_dpo(model, tok, rows, args: Args, ref: str) -> list[float]:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    policy, ref_model = copy.deepcopy(model), copy.deepcopy(model)
    stamps = trl_stamp_callback()
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = DPOConfig(**trl_common(out, args), per_device_train_batch_size=args.pairs, beta=0.1,
                        loss_type=["sigmoid"], precompute_ref_log_probs=ref == "precomputed",
                        max_length=args.prompt_len + args.completion_len)
        trainer = DPOTrainer(model=policy, ref_model=ref_model, args=cfg, train_dataset=Dataset.from_list(rows),
                             processing_class=tok, callbacks=[stamps])
        trainer.remove_callback(PrinterCallback)  # no metrics dict printed at the end
        trainer.train()
    return intervals(stamps.stamps, args.warmup)


def trl_grpo(model, tok, prompts, args: Args) -> list[float]:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    policy = copy.deepcopy(model)
    stamps = trl_stamp_callback()
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = GRPOConfig(**trl_common(out, args), per_device_train_batch_size=args.prompts * args.generations,
                         num_generations=args.generations, max_completion_length=args.new_tokens,
                         temperature=1.0, top_p=1.0, top_k=0, beta=0.0, num_iterations=1, epsilon=0.2,
                         loss_type="dapo", scale_rewards="group")
        trainer = GRPOTrainer(model=policy, reward_funcs=[vowel_reward], args=cfg, processing_class=tok,
                              train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                              callbacks=[stamps])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return intervals(stamps.stamps, args.warmup)


# ---------------------------------------------------------------------------------------------
# A/B/A/B and the table
# ---------------------------------------------------------------------------------------------


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0],) * 3
    return q1, med, q3


def run_method(name: str, mini, trl, data, model, tok, args: Args, have_trl: bool) -> dict:
    times = {"minirlhf": [], "TRL": []}
    for r in range(args.rounds):
        times["minirlhf"] += mini(model, tok, data, args)
        if have_trl:
            times["TRL"] += trl(model, tok, data, args)
        print(f"  {name} round {r + 1}/{args.rounds}: minirlhf {statistics.median(times['minirlhf']) * 1e3:.0f} ms"
              + (f", TRL {statistics.median(times['TRL']) * 1e3:.0f} ms" if have_trl else ""), flush=True)
    return times


def print_table(results: dict, args: Args, n_params: int, have_trl: bool, seconds: float) -> None:
    where = f"CPU ({platform.processor() or platform.machine()}), {args.threads} torch thread(s), {args.clock} clock"
    versions = f"torch {torch.__version__}, transformers {importlib.import_module('transformers').__version__}"
    if have_trl:
        versions += f", TRL {importlib.import_module('trl').__version__}"
    print(f"\n### Time per training step ({where}; {versions})\n")
    print(f"Llama {n_params / 1e6:.2f}M parameters, fp32. DPO: {args.pairs} pairs, prompt {args.prompt_len} + "
          f"completion {args.completion_len} tokens. GRPO: {args.prompts} prompts x "
          f"{args.generations} completions, prompt {args.prompt_len} + {args.new_tokens} sampled tokens, mu = 1, "
          f"beta = 0. {args.rounds} A/B rounds x {args.steps - args.warmup} timed steps per run"
          + ("; minirlhf without prompt sharing" if args.share_prompts == "off" else "") + ".\n")
    print("| step | minirlhf median ms | minirlhf IQR ms | TRL median ms | TRL IQR ms | minirlhf / TRL |")
    print("|---|---|---|---|---|---|")
    for name, times in results.items():
        q1, m, q3 = quartiles(times["minirlhf"])
        row = f"| {name} | {m * 1e3:.0f} | {q1 * 1e3:.0f}-{q3 * 1e3:.0f} | "
        if have_trl:
            t1, tm, t3 = quartiles(times["TRL"])
            row += f"{tm * 1e3:.0f} | {t1 * 1e3:.0f}-{t3 * 1e3:.0f} | {m / tm:.2f} |"
        else:
            row += "not installed | | |"
        print(row)
    print(f"\n(total {seconds:.0f} s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in vars(Args()).items():
        flag = "--" + name.replace("_", "-")
        if name == "only":
            parser.add_argument(flag, default=default, choices=["dpo", "grpo", "both"])
        elif name == "clock":
            parser.add_argument(flag, default=default, choices=list(CLOCK))
        elif name == "share_prompts":
            parser.add_argument(flag, default=default, choices=["on", "off"])
        elif name == "ref":
            parser.add_argument(flag, default=default, choices=["per-step", "precomputed", "both"])
        else:
            parser.add_argument(flag, type=type(default), default=default)
    args = Args(**vars(parser.parse_args()))
    if args.steps < args.warmup + 2:
        parser.error(f"--steps must be at least --warmup + 2 = {args.warmup + 2}, got {args.steps}")
    global clock
    clock = CLOCK[args.clock]
    torch.set_num_threads(args.threads)
    if args.share_prompts == "off":
        import minirlhf.lm

        minirlhf.lm.prompt_sharing_applies = lambda model, prompt_mask: False
    datasets.disable_progress_bars()  # TRL's dataset preparation, outside the timed steps
    os.environ["TQDM_DISABLE"] = "1"  # and TRL's bar while it precomputes reference log-probs
    have_trl = importlib.util.find_spec("trl") is not None
    if not have_trl:
        print("TRL is not installed (pip install -e '.[bench]'): timing minirlhf alone")
    start = time.perf_counter()
    tok = load_tokenizer("tokenizer")
    model = build_model(tok, args)
    results = {}
    for ref in (["per-step", "precomputed"] if args.ref == "both" else [args.ref]):
        if args.only in ("dpo", "both"):
            name = f"DPO, reference {ref}"
            results[name] = run_method(name, partial(mini_dpo, ref=ref), partial(trl_dpo, ref=ref),
                                       preference_rows(args), model, tok, args, have_trl)
    if args.only in ("grpo", "both"):
        results["GRPO"] = run_method("GRPO", mini_grpo, trl_grpo, prompt_rows(args), model, tok, args, have_trl)
    print_table(results, args, count_parameters(model), have_trl, time.perf_counter() - start)


if __name__ == "__main__":
    main()
