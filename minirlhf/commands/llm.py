"""The language-model runners: `minirlhf sft`, `rm`, `ppo`, `dpo`, `grpo` and `rft`.

Each pair `<method>_args(parser)` / `run_<method>(args, cfg)`: the runner loads the tokenizer,
the data (checked first) and the models, calls the method's trainer, evaluates on the built-in
world (evaluate.py) and writes the run folder (runs.py).
"""

from __future__ import annotations

import argparse
import time

from ..evaluate import ARITH_EVAL_ROWS, sequence_kl
from ..runs import finish, metrics_logger, show_progress
from ..scaling import autocast_forward, merged, prepare_scalar_model
from .common import add_data_args, data_counts, load_lm, load_rows, preference_rows, review_eval, run_device
from .options import (add_chat_args, add_scale_args, apply_chat, chat_settings, check_lengths, load_policy,
                      load_reference, scale_options, scale_summary)


# ---------------------------------------------------------------------------------------------
# sft
# ---------------------------------------------------------------------------------------------


def sft_args(p: argparse.ArgumentParser) -> None:
    add_data_args(p, "a new tiny Llama from scratch", "arithmetic; 'reviews' for the other world; a file holds "
                  "prompt/completion or messages rows")
    p.add_argument("--eval-every", type=int, default=100, help="evaluate every this many steps (built-in worlds)")
    p.add_argument("--prompt-field", default=None, help="--dataset field holding the prompt (default: prompt; "
                   "GSM8K: question)")
    p.add_argument("--completion-field", default=None,
                   help="--dataset field holding the completion (default: completion; GSM8K: answer)")
    add_chat_args(p)
    add_scale_args(p)


def run_sft(args: argparse.Namespace, cfg) -> dict:
    from ..evaluate import eval_arithmetic
    from ..models import count_parameters, load_tokenizer
    from ..sft import train_sft
    from ..zoo import load_split, new_tiny_model

    dataset = args.dataset or "arithmetic"
    opts = scale_options(args)  # flags first: a mistake is named before any file is read
    tok = load_tokenizer(args.model or "tokenizer", trust_remote_code=args.trust_remote_code)
    if dataset in ("arithmetic", "reviews"):
        rows = load_split(dataset, "train" if dataset == "arithmetic" else "sft")
    else:  # checked before the model is loaded
        from .. import data

        chat = chat_settings(args) is not None  # lengths are checked once the chat template is applied
        rows = load_rows(args, data.load_completions, tokenizer=tok, max_length=None if chat else cfg.max_length,
                         prompt_field=args.prompt_field or "prompt",
                         completion_field=args.completion_field or "completion")
        if chat:
            rows = check_lengths(args, tok, apply_chat(args, tok, rows), cfg.max_length)
    model = load_policy(args, args.model, opts) if args.model else new_tiny_model(tok).to(run_device(args))
    eval_fn = None
    if dataset == "arithmetic":
        test = load_split("arithmetic", "test")[:200]
        eval_fn = lambda m: {"test_accuracy": eval_arithmetic(m, tok, test)["accuracy"]}  # noqa: E731
    log = metrics_logger(args, "sft", cfg)
    t0 = time.time()
    train_sft(model, tok, rows, cfg, eval_fn=eval_fn, eval_every=args.eval_every if eval_fn else 0,
              logger=log, progress=show_progress(args))
    seconds = time.time() - t0
    summary = {"method": "sft", "model": args.model or "tiny Llama from scratch",
               "parameters": count_parameters(model), **scale_summary(model, opts), "dataset": dataset,
               "examples": len(rows), **data_counts(args), "steps": cfg.steps, "seconds": round(seconds, 1),
               "final_loss": round(log.series("loss")[-1], 4) if log.series("loss") else None}
    if dataset == "arithmetic":
        for split in ("test", "test_ood"):
            m = eval_arithmetic(model, tok, load_split("arithmetic", split))
            summary[f"{split}/accuracy"] = m["accuracy"]
            summary[f"{split}/trace_accuracy"] = m["trace_accuracy"]
    return finish(args, "sft", log, summary, merged(model), tok, ["loss", "test_accuracy"])


# ---------------------------------------------------------------------------------------------
# rm
# ---------------------------------------------------------------------------------------------


def rm_args(p):
    add_data_args(p, "review-sft", "reviews prefs_train")
    add_scale_args(p)


def run_rm(args, cfg) -> dict:
    from ..models import ScalarHeadModel, load_tokenizer
    from ..reward_model import evaluate_reward_model, train_reward_model
    from ..zoo import load_split

    opts = scale_options(args)  # flags first: a mistake is named before any file is read
    model_name = args.model or "review-sft"
    tok = load_tokenizer(model_name if args.model else "tokenizer")
    rows = preference_rows(args, tok, max_length=cfg.max_length)  # checked before the model is loaded
    rm = ScalarHeadModel.from_causal_lm(model_name, trust_remote_code=args.trust_remote_code).to(run_device(args))
    rm = prepare_scalar_model(rm, opts)  # LoRA / checkpointing on the backbone, the head trained in full
    t0 = time.time()
    log = train_reward_model(rm, tok, rows, cfg, logger=metrics_logger(args, "rm", cfg),
                             progress=show_progress(args))
    summary = {"method": "rm", "model": model_name, "pairs": len(rows), **data_counts(args),
               **scale_summary(rm, opts), "steps": cfg.steps, "seconds": round(time.time() - t0, 1)}
    if args.dataset is None:
        ev = evaluate_reward_model(rm, tok, load_split("reviews", "prefs_test"))
        summary.update({k: round(float(v), 4) for k, v in ev.items() if isinstance(v, (int, float))})
    return finish(args, "rm", log, summary, merged(rm), tok, ["loss", "accuracy"])


# ---------------------------------------------------------------------------------------------
# ppo
# ---------------------------------------------------------------------------------------------


def ppo_args(p):
    add_data_args(p, "review-sft", "reviews prompts")
    p.add_argument("--reward-model", default="review-rm", help="a ScalarHeadModel folder (default review-rm)")
    add_scale_args(p)


def run_ppo(args, cfg) -> dict:
    from ..models import ScalarHeadModel, check_same_vocab, load_tokenizer
    from ..ppo import train_ppo
    from ..worlds import reviews

    opts = scale_options(args)  # flags first: a mistake is named before any file is read
    model_name = args.model or "review-sft"
    tok = load_tokenizer(model_name if args.model else "tokenizer")
    rows = preference_rows(args, tok)  # checked before the models are loaded
    if args.dataset is not None:  # every PPO step samples --batch-size distinct prompts
        from ..data import require_rows

        require_rows(len(rows), cfg.batch_size, "--batch-size", args.dataset, "prompts")
    policy = load_policy(args, model_name, opts)
    ref = load_reference(args, model_name, policy, opts)  # under LoRA: the same base, adapters off
    rm = ScalarHeadModel.from_pretrained(args.reward_model, trust_remote_code=args.trust_remote_code)
    check_same_vocab(rm, policy, args.reward_model, model_name, tok)  # else an IndexError mid-PPO
    rm = rm.to(run_device(args)).eval()
    if opts.bf16:
        autocast_forward(rm)
    prompts = [r["prompt"] for r in rows]  # repeats kept: they weight prompts as the data does
    builtin = args.dataset is None
    t0 = time.time()
    log, policy = train_ppo(policy, tok, prompts, rm, cfg, ref_model=ref,
                            gold_fn=reviews.gold_rewards if builtin else None, logger=metrics_logger(args, "ppo", cfg),
                            progress=show_progress(args))
    summary = {"method": f"ppo (beta={cfg.beta})", "model": model_name, **data_counts(args),
               **scale_summary(policy, opts), "steps": cfg.steps, "seconds": round(time.time() - t0, 1)}
    if builtin:
        summary.update(review_eval(policy, ref, tok, cfg.max_new_tokens))
    return finish(args, "ppo", log, summary, merged(policy), tok, ["objective/scores", "objective/gold", "objective/kl"])


# ---------------------------------------------------------------------------------------------
# dpo
# ---------------------------------------------------------------------------------------------


def dpo_args(p):
    add_data_args(p, "review-sft", "reviews prefs_train")
    add_scale_args(p)
    from .judges import online_dpo_args
    online_dpo_args(p)


def run_dpo(args, cfg) -> dict:
    from ..dpo import train_dpo
    from ..models import load_tokenizer

    if getattr(args, "online", False):  # sample -> judge -> DPO rounds (commands/judges.py)
        from .judges import run_online_dpo
        return run_online_dpo(args, cfg)
    model_name = args.model or "review-sft"
    tok = load_tokenizer(model_name if args.model else "tokenizer")
    rows = preference_rows(args, tok, max_length=cfg.max_length)  # checked before the models are loaded
    opts = scale_options(args)
    policy = load_policy(args, model_name, opts)
    ref = load_reference(args, model_name, policy, opts)  # LoRA: the policy's base, adapters off
    t0 = time.time()
    log = train_dpo(policy, tok, rows, cfg, ref_model=ref, logger=metrics_logger(args, "dpo", cfg),
                    progress=show_progress(args))
    summary = {"method": f"{cfg.loss_type} (beta={cfg.beta})", "model": model_name, **data_counts(args),
               **scale_summary(policy, opts), "steps": cfg.steps,
               "seconds": round(time.time() - t0, 1)}
    if args.dataset is None:
        summary.update(review_eval(policy.eval(), ref, tok))
    return finish(args, "dpo", log, summary, merged(policy), tok, ["loss", "rewards/margins", "logps/chosen"])


# ---------------------------------------------------------------------------------------------
# grpo
# ---------------------------------------------------------------------------------------------


def grpo_args(p):
    add_data_args(p, "arith-sft", "arithmetic train; a file holds a prompt (or question) and an answer whose final "
                  "answer ('#### N', '\\boxed{N}', 'The answer is N' or a number) grades the completions")
    p.add_argument("--prompt-field", default=None,
                   help="--dataset field holding the prompt (default: prompt, else question)")
    p.add_argument("--answer-field", default="answer", help="--dataset field holding the gold answer (default: answer)")
    p.add_argument("--reward", default="answer", choices=("answer", "trace"),
                   help="built-in world: answer (the final answer is right) or trace (every step too; "
                        "the reward that lifts held-out accuracy in notebook 05)")
    add_chat_args(p)
    add_scale_args(p)


def run_grpo(args, cfg) -> dict:
    from .. import grpo
    from ..evaluate import eval_arithmetic
    from ..models import load_tokenizer
    from ..worlds import arithmetic
    from ..zoo import load_split

    model_name = args.model or "arith-sft"
    tok = load_tokenizer(model_name if args.model else "tokenizer")
    # the variant's paper preset, then what the YAML preset and the flags set
    cfg = grpo.preset(cfg.variant, **{k: getattr(cfg, k) for k in args.given_fields if k != "variant"})
    if args.dataset is None:
        prompts = [r["prompt"] for r in load_split("arithmetic", "train")]
        reward_fns = [arithmetic.arithmetic_trace_reward if args.reward == "trace" else arithmetic.arithmetic_reward]
    else:  # checked before the model is loaded; a row whose gold answer does not parse is a bad row
        from .. import data

        rows = load_rows(args, data.load_prompts_with_answers, tokenizer=tok, prompt_field=args.prompt_field,
                             answer_field=args.answer_field)
        rows = apply_chat(args, tok, rows)  # --chat-template: the question as a user turn, with the instruction
        gold = {r["prompt"]: r["gold"] for r in rows}
        prompts = list(gold)  # each distinct prompt once
        data.require_rows(len(prompts), cfg.prompts_per_step, "--prompts-per-step", args.dataset, "distinct prompts")
        reward_fns = [arithmetic.numeric_answer_reward(gold)]
    opts = scale_options(args)
    policy = load_policy(args, model_name, opts)
    ref = load_reference(args, model_name, policy, opts) if cfg.beta > 0 else None  # LoRA: base, adapters off
    test = load_split("arithmetic", "test")[:ARITH_EVAL_ROWS]
    before = eval_arithmetic(policy, tok, test)["accuracy"] if args.dataset is None else None
    t0 = time.time()
    log = grpo.train_grpo(policy, tok, prompts, reward_fns, cfg, ref_model=ref,
                          logger=metrics_logger(args, "grpo", cfg),
                          progress=show_progress(args))
    summary = {"method": cfg.variant, "model": model_name, **data_counts(args), **scale_summary(policy, opts),
               "steps": cfg.steps, "seconds": round(time.time() - t0, 1)}
    if args.dataset is None:
        summary["reward"] = args.reward
    if args.dataset is None:
        ood = load_split("arithmetic", "test_ood")[:ARITH_EVAL_ROWS]
        summary.update({"accuracy_before": before, "accuracy": eval_arithmetic(policy, tok, test)["accuracy"],
                        "accuracy_ood": eval_arithmetic(policy, tok, ood)["accuracy"],
                        **sequence_kl(policy, load_lm(args, model_name).eval(), tok, [r["prompt"] for r in test])})
    return finish(args, "grpo", log, summary, merged(policy), tok, ["reward/mean", "entropy", "completion_length/mean"])


# ---------------------------------------------------------------------------------------------
# rft
# ---------------------------------------------------------------------------------------------


def rft_args(p):
    add_data_args(p, "arith-sft", "arithmetic train (a --dataset is not supported yet)")
    p.add_argument("--reward", default="answer", choices=("answer", "trace"),
                   help="the verifier that keeps a sample: answer (final answer right) or trace (every step too)")


def run_rft(args, cfg) -> dict:
    from ..errors import ConfigError
    from ..evaluate import eval_arithmetic
    from ..models import load_tokenizer
    from ..rft import train_rft
    from ..worlds import arithmetic
    from ..zoo import load_split

    if args.dataset is not None:
        raise ConfigError("minirlhf rft runs on the built-in arithmetic world only", "--dataset")
    model_name = args.model or "arith-sft"
    tok = load_tokenizer(model_name if args.model else "tokenizer")
    prompts = [r["prompt"] for r in load_split("arithmetic", "train")]
    reward_fn = arithmetic.arithmetic_trace_reward if args.reward == "trace" else arithmetic.arithmetic_reward
    policy = load_lm(args, model_name)
    test = load_split("arithmetic", "test")[:ARITH_EVAL_ROWS]
    before = eval_arithmetic(policy, tok, test)["accuracy"]
    t0 = time.time()
    log = train_rft(policy, tok, prompts, reward_fn, cfg, logger=metrics_logger(args, "rft", cfg),
                    progress=show_progress(args))
    ood = load_split("arithmetic", "test_ood")[:ARITH_EVAL_ROWS]
    summary = {"method": "rft", "model": model_name, "reward": args.reward, "iterations": cfg.iterations,
               "samples": cfg.samples, "kept": sum(log.series("kept")), "seconds": round(time.time() - t0, 1),
               "accuracy_before": before, "accuracy": eval_arithmetic(policy, tok, test)["accuracy"],
               "accuracy_ood": eval_arithmetic(policy, tok, ood)["accuracy"],
               **sequence_kl(policy, load_lm(args, model_name).eval(), tok, [r["prompt"] for r in test])}
    return finish(args, "rft", log, summary, policy, tok, ["reward/mean", "kept", "sft/loss"])
