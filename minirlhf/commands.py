"""What each `minirlhf <method>` subcommand runs: load, train, evaluate, save, summarise.

Each runner takes the parsed flags and the method's config dataclass and returns a summary
dict with the same keys across methods (`gold_reward` or `accuracy`, `kl`, `seconds`), which
is what `minirlhf baselines` puts in one table. The method logic itself lives in the method
files; this module only wires data, models and evaluation around it.

Defaults use the built-in world and the shipped checkpoints; `--model` takes any causal LM by
hub name or local path, `--dataset` any JSON/JSONL/Parquet file in TRL's formats.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from .prm import VerifierConfig
from .utils import MetricsLogger

REVIEW_EVAL_PROMPTS = 128   # held-out review prompts for gold reward and KL
ARITH_EVAL_ROWS = 200       # held-out chains for accuracy


def _common(p: argparse.ArgumentParser, model: str, dataset: str) -> None:
    p.add_argument("--model", default=None, help=f"hub name or local path of a causal LM (default: {model})")
    p.add_argument("--dataset", default=None, help=f"a JSON/JSONL/Parquet file (default: built-in {dataset})")
    p.add_argument("--drop-invalid", action="store_true",
                   help="drop malformed dataset rows (their count is reported) instead of stopping")


def _device(args) -> torch.device:
    from .utils import get_device

    return get_device(getattr(args, "device", None))


def _load(args, name: str):
    """A causal LM on the run's device (trust_remote_code only when the user passed it)."""
    from .models import load_model

    return load_model(name, device=_device(args), trust_remote_code=getattr(args, "trust_remote_code", False))


def _finish(args, name: str, log: MetricsLogger, summary: dict, model=None, tok=None, plot_keys=(),
            x: str = "step") -> dict:
    from .cli import plot_metrics, run_dir
    from .utils import dist_info

    if dist_info()[0] != 0:  # under torchrun only rank 0 writes
        return summary
    out = run_dir(args.name or name)
    with open(out / "metrics.jsonl", "w") as f:
        for row in log.rows:
            f.write(json.dumps(row) + "\n")
    plot_metrics(log, list(plot_keys), out / "metrics.png", x=x)
    if model is not None:
        model.save_pretrained(out / "model")
        if tok is not None:
            tok.save_pretrained(out / "model")
    summary["run_dir"] = str(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def sequence_kl(policy, ref, tok, prompts: list[str], max_new_tokens: int = 64, gold_fn=None) -> dict:
    """Sequence KL(pi || ref) (summed k1 over one sample per prompt) and, optionally, its gold reward."""
    from .ppo import PPOConfig, evaluate_policy

    m = evaluate_policy(policy, ref, tok, prompts, PPOConfig(max_new_tokens=max_new_tokens), gold_fn=gold_fn)
    out = {"kl": round(m["eval/kl"], 4)}
    if gold_fn is not None:
        out["gold_reward"] = round(m["eval/gold"], 4)
    return out


def _review_eval(policy, ref, tok, max_new_tokens: int = 64) -> dict:
    """Gold reward and sequence KL(pi || ref) of one sample per held-out review prompt."""
    from .worlds import reviews
    from .zoo import load_split

    prompts = [r["prompt"] for r in load_split("reviews", "prompts_test")][:REVIEW_EVAL_PROMPTS]
    return sequence_kl(policy, ref, tok, prompts, max_new_tokens, gold_fn=reviews.gold_rewards)


def _preference_rows(args, tok, split: str = "prefs_train") -> list[dict]:
    from . import data
    from .zoo import load_split

    if args.dataset is None:
        return load_split("reviews", split)
    report: dict = {}
    rows = data.load_preferences(args.dataset, tokenizer=tok, drop_invalid=args.drop_invalid, report=report)
    _report_dropped(report)
    return rows


def _report_dropped(report: dict) -> None:
    if report.get("n_dropped"):
        print(f"[data] {report['source']}: dropped {report['n_dropped']} of {report['n_rows']} invalid rows; "
              f"first: {report['errors'][0]}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# sft
# ---------------------------------------------------------------------------------------------


def sft_args(p: argparse.ArgumentParser) -> None:
    _common(p, "a new tiny Llama from scratch", "arithmetic; 'reviews' for the other world; a file holds "
            "prompt/completion or messages rows")
    p.add_argument("--eval-every", type=int, default=100, help="evaluate every this many steps (built-in worlds)")


def run_sft(args: argparse.Namespace, cfg) -> dict:
    from .evaluate import eval_arithmetic
    from .models import count_parameters, load_tokenizer
    from .sft import train_sft
    from .zoo import load_split, new_tiny_model

    dataset = args.dataset or "arithmetic"
    tok = load_tokenizer(args.model or "tokenizer", trust_remote_code=args.trust_remote_code)
    model = _load(args, args.model) if args.model else new_tiny_model(tok).to(_device(args))
    if dataset in ("arithmetic", "reviews"):
        rows = load_split(dataset, "train" if dataset == "arithmetic" else "sft")
    else:
        from . import data

        report: dict = {}
        rows = data.load_completions(dataset, tokenizer=tok, max_length=cfg.max_length,
                                     drop_invalid=args.drop_invalid, report=report)
        _report_dropped(report)
    eval_fn = None
    if dataset == "arithmetic":
        test = load_split("arithmetic", "test")[:200]
        eval_fn = lambda m: {"test_accuracy": eval_arithmetic(m, tok, test)["accuracy"]}  # noqa: E731
    log = MetricsLogger()
    t0 = time.time()
    train_sft(model, tok, rows, cfg, eval_fn=eval_fn, eval_every=args.eval_every if eval_fn else 0,
              logger=log, progress=True)
    seconds = time.time() - t0
    summary = {"method": "sft", "model": args.model or "tiny Llama from scratch",
               "parameters": count_parameters(model), "dataset": dataset, "examples": len(rows),
               "steps": cfg.steps, "seconds": round(seconds, 1), "final_loss": round(log.series("loss")[-1], 4)}
    if dataset == "arithmetic":
        for split in ("test", "test_ood"):
            m = eval_arithmetic(model, tok, load_split("arithmetic", split))
            summary[f"{split}/accuracy"] = m["accuracy"]
            summary[f"{split}/trace_accuracy"] = m["trace_accuracy"]
    return _finish(args, "sft", log, summary, model, tok, ["loss", "test_accuracy"])


# ---------------------------------------------------------------------------------------------
# rm
# ---------------------------------------------------------------------------------------------


def rm_args(p):
    _common(p, "review-sft", "reviews prefs_train")


def run_rm(args, cfg) -> dict:
    from .models import ScalarHeadModel, load_tokenizer
    from .reward_model import evaluate_reward_model, train_reward_model
    from .zoo import load_split

    model_name = args.model or "review-sft"
    tok = load_tokenizer(model_name if args.model else "tokenizer")
    rm = ScalarHeadModel.from_causal_lm(model_name, trust_remote_code=args.trust_remote_code).to(_device(args))
    rows = _preference_rows(args, tok)
    t0 = time.time()
    log = train_reward_model(rm, tok, rows, cfg, progress=True)
    summary = {"method": "rm", "model": model_name, "pairs": len(rows), "steps": cfg.steps,
               "seconds": round(time.time() - t0, 1)}
    if args.dataset is None:
        ev = evaluate_reward_model(rm, tok, load_split("reviews", "prefs_test"))
        summary.update({k: round(float(v), 4) for k, v in ev.items() if isinstance(v, (int, float))})
    return _finish(args, "rm", log, summary, rm, tok, ["loss", "accuracy"])


# ---------------------------------------------------------------------------------------------
# ppo
# ---------------------------------------------------------------------------------------------


def ppo_args(p):
    _common(p, "review-sft", "reviews prompts")
    p.add_argument("--reward-model", default="review-rm", help="a ScalarHeadModel folder (default review-rm)")


def run_ppo(args, cfg) -> dict:
    from .models import ScalarHeadModel, load_tokenizer
    from .ppo import train_ppo
    from .worlds import reviews

    model_name = args.model or "review-sft"
    tok = load_tokenizer(model_name if args.model else "tokenizer")
    policy, ref = _load(args, model_name), _load(args, model_name).eval()
    rm = ScalarHeadModel.from_pretrained(args.reward_model, trust_remote_code=args.trust_remote_code)
    rm = rm.to(_device(args)).eval()
    rows = _preference_rows(args, tok)
    prompts = [r["prompt"] for r in rows]  # repeats kept: they weight prompts as the data does
    builtin = args.dataset is None
    t0 = time.time()
    log, policy = train_ppo(policy, tok, prompts, rm, cfg, ref_model=ref,
                            gold_fn=reviews.gold_rewards if builtin else None)
    summary = {"method": f"ppo (beta={cfg.beta})", "model": model_name, "steps": cfg.steps,
               "seconds": round(time.time() - t0, 1)}
    if builtin:
        summary.update(_review_eval(policy, ref, tok, cfg.max_new_tokens))
    return _finish(args, "ppo", log, summary, policy, tok, ["objective/scores", "objective/gold", "objective/kl"])


# ---------------------------------------------------------------------------------------------
# dpo
# ---------------------------------------------------------------------------------------------


def dpo_args(p):
    _common(p, "review-sft", "reviews prefs_train")


def run_dpo(args, cfg) -> dict:
    from .dpo import train_dpo
    from .models import load_tokenizer

    model_name = args.model or "review-sft"
    tok = load_tokenizer(model_name if args.model else "tokenizer")
    policy, ref = _load(args, model_name), _load(args, model_name).eval()
    rows = _preference_rows(args, tok)
    t0 = time.time()
    log = train_dpo(policy, tok, rows, cfg, ref_model=ref)
    summary = {"method": f"{cfg.loss_type} (beta={cfg.beta})", "model": model_name, "steps": cfg.steps,
               "seconds": round(time.time() - t0, 1)}
    if args.dataset is None:
        summary.update(_review_eval(policy.eval(), ref, tok))
    return _finish(args, "dpo", log, summary, policy, tok, ["loss", "rewards/margins", "logps/chosen"])


# ---------------------------------------------------------------------------------------------
# grpo
# ---------------------------------------------------------------------------------------------


def grpo_args(p):
    p.add_argument("--model", default=None, help="hub name or local path of a causal LM (default: arith-sft)")
    p.add_argument("--dataset", default=None,
                   help="JSON/JSONL/Parquet with a prompt (or question) field and an answer graded by '#### N' "
                        "(default: built-in arithmetic train)")
    p.add_argument("--reward", default="answer", choices=("answer", "trace"),
                   help="built-in world: answer (the final answer is right) or trace (every step too; "
                        "the reward that lifts held-out accuracy in notebook 05)")


def run_grpo(args, cfg) -> dict:
    from . import grpo
    from .evaluate import eval_arithmetic
    from .models import load_tokenizer
    from .worlds import arithmetic
    from .zoo import load_split

    model_name = args.model or "arith-sft"
    tok = load_tokenizer(model_name if args.model else "tokenizer")
    policy = _load(args, model_name)
    # the variant's paper preset, then what the YAML preset and the flags set
    cfg = grpo.preset(cfg.variant, **{k: getattr(cfg, k) for k in args.given_fields if k != "variant"})
    if args.dataset is None:
        prompts = [r["prompt"] for r in load_split("arithmetic", "train")]
        reward_fns = [arithmetic.arithmetic_trace_reward if args.reward == "trace" else arithmetic.arithmetic_reward]
    else:
        from datasets import load_dataset

        ds = load_dataset("json" if str(args.dataset).endswith(("json", "jsonl")) else "parquet",
                          data_files=str(args.dataset), split="train").to_list()
        field = "prompt" if "prompt" in ds[0] else "question"
        answers = {r[field]: arithmetic.extract_answer(r["answer"]) for r in ds}
        prompts = list(answers)

        def reward_fns(ps, cs):  # noqa: E306 - the real-data verifiable reward: exact final answer
            return [float(arithmetic.extract_answer(c) == answers[p]) for p, c in zip(ps, cs)]
    test = load_split("arithmetic", "test")[:ARITH_EVAL_ROWS]
    before = eval_arithmetic(policy, tok, test)["accuracy"] if args.dataset is None else None
    t0 = time.time()
    log = grpo.train_grpo(policy, tok, prompts, reward_fns, cfg)
    summary = {"method": cfg.variant, "model": model_name, "steps": cfg.steps, "seconds": round(time.time() - t0, 1)}
    if args.dataset is None:
        summary["reward"] = args.reward
    if args.dataset is None:
        ood = load_split("arithmetic", "test_ood")[:ARITH_EVAL_ROWS]
        summary.update({"accuracy_before": before, "accuracy": eval_arithmetic(policy, tok, test)["accuracy"],
                        "accuracy_ood": eval_arithmetic(policy, tok, ood)["accuracy"],
                        **sequence_kl(policy, _load(args, model_name).eval(), tok, [r["prompt"] for r in test])})
    return _finish(args, "grpo", log, summary, policy, tok, ["reward/mean", "entropy", "completion_length/mean"])



# ---------------------------------------------------------------------------------------------
# prm: a verifier trained on the policy's own arithmetic samples, judged by best-of-N
# ---------------------------------------------------------------------------------------------


@dataclass
class VerifierRunConfig(VerifierConfig):
    """`minirlhf prm`: which verifier, its labels, and the samples it is trained and judged on.
    (CPU only: prm.py keeps its tensors on the CPU.)"""

    kind: str = "prm"
    """prm (a score at every step), orm (one score at the end) or implicit (a causal LM trained on
    outcome labels whose log-ratio to the policy gives step rewards: Yuan et al., 2024)."""
    labels: str = "gold"
    """PRM step labels: gold (the checker, prefix-closed), mc-hard or mc-soft (Math-Shepherd
    Monte-Carlo rollouts from the policy). ORM and implicit PRM use outcome labels."""
    n_train: int = 2000
    """Train prompts, one solution each sampled from the policy at temperature 1, then labelled."""
    mc_rollouts: int = 8
    """Monte-Carlo labels: rollouts per step prefix (Math-Shepherd uses 8)."""
    n_dev: int = 200
    """With eval_every > 0: dev-prompt solutions whose answer AUC picks the best weights."""
    n_eval_prompts: int = 100
    """Held-out test prompts for best-of-N."""
    best_of: int = 16
    """N: solutions sampled per held-out prompt; the verifier picks one."""
    aggregation: str = "min"
    """How step scores become one score per solution: min, product, last or mean (prm.AGGREGATIONS)."""
    max_new_tokens: int = 64
    """Longest sampled solution in tokens."""


def prm_args(p):
    p.add_argument("--model", default=None, help="the policy that writes the solutions (default: arith-sft)")
    p.add_argument("--backbone", default=None,
                   help="the verifier's starting weights, and the implicit PRM's reference (default: --model if "
                        "given, else arith-sft-full: a verifier has to know the arithmetic it checks)")


def _sample_solutions(policy, tok, split: str, n_prompts: int, per_prompt: int, cfg, g) -> tuple[list, list]:
    """`per_prompt` solutions at temperature 1 for each of the first `n_prompts` prompts of a split."""
    from .lm import generate
    from .zoo import load_split

    prompts = [r["prompt"] for r in load_split("arithmetic", split)[:n_prompts] for _ in range(per_prompt)]
    completions, _ = generate(policy, tok, prompts, cfg.max_new_tokens, temperature=1.0, generator=g,
                              batch_size=512)
    return prompts, completions


def _verifier_rows(cfg: VerifierRunConfig, policy, tok, prompts, completions, g) -> list[dict]:
    """Training rows of the verifier: TRL PRM rows with step labels, or outcome-labelled solutions."""
    from . import prm

    if cfg.kind != "prm":
        return [{"prompt": p, "completion": c, "label": prm.answer_correct(p, c)} for p, c in zip(prompts, completions)]
    if cfg.labels == "gold":
        return prm.to_prm_rows(prompts, completions)
    if cfg.labels not in ("mc-hard", "mc-soft"):
        raise ValueError(f"labels={cfg.labels!r}: expected gold, mc-hard or mc-soft")
    steps = [prm.split_into_steps(c) for c in completions]
    hard, soft = prm.monte_carlo_labels(prompts, steps, prm.PolicyRollouts(policy, tok, generator=g),
                                        prm.answer_correct, cfg.mc_rollouts)
    return prm.to_prm_rows(prompts, completions, hard if cfg.labels == "mc-hard" else soft)


def _verifier_scores(verifier, cfg: VerifierRunConfig, ref, tok, prompts, completions) -> torch.Tensor:
    """One score per solution, higher = more likely right (`ref`: the implicit PRM's reference). -> (N,)"""
    from . import prm

    if cfg.kind == "orm":
        return prm.orm_scores(verifier, tok, prompts, completions)
    if cfg.kind == "implicit":
        rewards, mask = prm.implicit_prm_step_scores(verifier, ref, tok, prompts, completions, cfg.beta)
        return prm.aggregate_steps(torch.sigmoid(rewards), mask, cfg.aggregation)
    return prm.aggregate_steps(*prm.prm_step_scores(verifier, tok, prompts, completions), cfg.aggregation)


def _auc_or_none(scores, labels) -> float | None:
    """ROC AUC, or None when the labels hold a single class."""
    from .prm import auc

    labels = torch.as_tensor(labels).bool()
    return round(auc(scores, labels), 4) if 0 < int(labels.sum()) < labels.numel() else None


def _best_of_n_report(verifier, cfg: VerifierRunConfig, policy, ref, tok, g) -> dict:
    """Answer and whole-trace accuracy of the verifier's pick of N, against N = 1, majority vote
    and the oracle (is any of the N right), on held-out test prompts."""
    from . import prm
    from .worlds.arithmetic import check_chain, extract_answer

    P, N = cfg.n_eval_prompts, cfg.best_of
    prompts, completions = _sample_solutions(policy, tok, "test", P, N, cfg, g)
    results = [check_chain(p, c) for p, c in zip(prompts, completions)]
    answer = torch.tensor([r.answer_correct for r in results]).view(P, N)  # (P, N)
    trace = torch.tensor([r.trace_correct for r in results]).view(P, N)
    scores = _verifier_scores(verifier, cfg, ref, tok, prompts, completions).view(P, N)
    answers = [[extract_answer(c) for c in completions[i * N:(i + 1) * N]] for i in range(P)]
    out = {"accuracy@1": answer.float().mean().item(), "accuracy": prm.best_of_n(scores, answer).float().mean().item(),
           "trace_accuracy@1": trace.float().mean().item(),
           "trace_accuracy": prm.best_of_n(scores, trace).float().mean().item(),
           "accuracy_majority_vote": sum(prm.majority_vote(answers, answer.tolist())) / P,
           "accuracy_oracle": answer.any(-1).float().mean().item(),
           "answer_auc": _auc_or_none(scores.flatten(), answer.flatten())}
    if cfg.kind == "prm":  # how well it scores steps, against the checker's prefix-closed labels
        step_scores, mask = prm.prm_step_scores(verifier, tok, prompts, completions)
        gold = [y for p, c in zip(prompts, completions) for y in prm.gold_step_labels(p, c)]
        out["step_auc"] = _auc_or_none(step_scores[mask.bool()], gold)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def run_prm(args, cfg: VerifierRunConfig) -> dict:
    from . import prm
    from .models import ScalarHeadModel, load_model, load_tokenizer
    from .utils import set_seed

    if cfg.kind not in ("prm", "orm", "implicit"):
        raise ValueError(f"kind={cfg.kind!r}: expected prm, orm or implicit")
    model_name = args.model or "arith-sft"
    tok = load_tokenizer(model_name if args.model else "tokenizer")
    policy = load_model(model_name, trust_remote_code=args.trust_remote_code).eval()
    g = set_seed(cfg.seed)
    t0 = time.time()
    # 1. solutions to learn from, labelled (the policy's own samples on train prompts)
    prompts, completions = _sample_solutions(policy, tok, "train", cfg.n_train, 1, cfg, g)
    rows = _verifier_rows(cfg, policy, tok, prompts, completions, g)
    # 2. the verifier, from the backbone's weights; early stopping on dev answer AUC if asked
    backbone_name = args.backbone or (args.model or "arith-sft-full")
    backbone = load_model(backbone_name, trust_remote_code=args.trust_remote_code)
    verifier = backbone if cfg.kind == "implicit" else ScalarHeadModel(backbone)
    ref = load_model(backbone_name, trust_remote_code=args.trust_remote_code).eval() if cfg.kind == "implicit" else None
    eval_fn = None
    if cfg.eval_every > 0:
        dev_p, dev_c = _sample_solutions(policy, tok, "dev", cfg.n_dev, 1, cfg, g)
        dev_y = [prm.answer_correct(p, c) for p, c in zip(dev_p, dev_c)]
        eval_fn = lambda m: prm.auc(_verifier_scores(m, cfg, ref, tok, dev_p, dev_c), dev_y)  # noqa: E731
    train_cfg = VerifierConfig(**{f.name: getattr(cfg, f.name) for f in fields(VerifierConfig)})
    log = prm.train_verifier(verifier, tok, rows, cfg.kind, train_cfg, ref=ref, eval_fn=eval_fn)
    method = {"prm": f"PRM ({cfg.labels} labels, {cfg.aggregation})", "orm": "ORM",
              "implicit": f"implicit PRM ({cfg.aggregation})"}[cfg.kind]
    summary = {"method": method, "model": model_name, "backbone": backbone_name,
               "train_solutions": len(rows), "steps": cfg.steps, "seconds": round(time.time() - t0, 1),
               "best_of": cfg.best_of}
    # 3. best-of-N on held-out prompts
    summary.update(_best_of_n_report(verifier, cfg, policy, ref, tok, g))
    return _finish(args, "prm", log, summary, verifier, tok, ["loss", "val"])


# ---------------------------------------------------------------------------------------------
# diffusion: one RL method on a shipped diffusion / flow model, reward before and after
# ---------------------------------------------------------------------------------------------


@dataclass
class DiffusionRunConfig:
    """`minirlhf diffusion`: which method, on which world; the method's other settings are its defaults."""

    method: str = "ddpo"
    """ddpo (DDPO_IS), ddpo_sf (REINFORCE), draft (DRaFT-1, reward backprop), diffusion_dpo, flow_grpo."""
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


# method: (model kind, config class, recipe: the settings notebook 07 uses on the points world)
DIFFUSION_METHODS = {
    "ddpo": ("ddpm", "DDPOConfig", {"lr": 3e-4}),
    "ddpo_sf": ("ddpm", "DDPOConfig", {"lr": 3e-4, "importance_sampling": False}),
    "draft": ("ddpm", "DRaFTConfig", {}),
    "diffusion_dpo": ("ddpm", "DiffusionDPOConfig", {}),
    "flow_grpo": ("flow", "FlowGRPOConfig", {}),
}


def diffusion_args(p):
    p.add_argument("--model", default=None, help="a diffusion checkpoint name or folder (default: "
                   "diffusion-<world>-ddpm, or -flow for flow_grpo)")


def _diffusion_rewards(world: str) -> tuple[dict, str, object]:
    """(rewards to evaluate, the task reward's name, the gold classifier or None) of a world."""
    from .diffusion import load_diffusion_model
    from .diffusion.rewards import box_distance_reward, box_reward, classifier_logprob_reward

    if world == "points":
        return {"box": box_reward, "distance": box_distance_reward}, "box", None
    if world != "digits":
        raise ValueError(f"world={world!r}: expected points or digits")
    proxy, gold = (load_diffusion_model(f"diffusion-digits-{k}-clf").requires_grad_(False) for k in ("proxy", "gold"))
    return {"proxy": classifier_logprob_reward(proxy), "gold": classifier_logprob_reward(gold)}, "proxy", gold


def run_diffusion(args, cfg: DiffusionRunConfig) -> dict:
    from . import diffusion
    from .diffusion.models import save_net
    from .diffusion.rewards import box_distance_reward

    if cfg.method not in DIFFUSION_METHODS:
        raise ValueError(f"method={cfg.method!r}: expected one of {list(DIFFUSION_METHODS)}")
    kind, config_name, recipe = DIFFUSION_METHODS[cfg.method]
    model_name = args.model or f"diffusion-{cfg.world}-{kind}"
    torch.manual_seed(cfg.seed)
    policy = diffusion.load_diffusion_model(model_name)
    ref = diffusion.frozen_copy(policy)
    rewards, task, gold_clf = _diffusion_rewards(cfg.world)
    # the training reward: the task's; the differentiable distance for DRaFT and the DPO pairs on points
    reward_fn = rewards[task]
    if cfg.world == "points" and cfg.method in ("draft", "diffusion_dpo"):
        reward_fn = box_distance_reward

    def evaluate(net, iteration: int = 0) -> dict:
        return diffusion.evaluate_policy(net, ref, rewards, per_label=cfg.eval_per_label, gold_classifier=gold_clf)

    config_cls = getattr(diffusion, config_name)
    steps_field = "steps" if cfg.method == "diffusion_dpo" else "iterations"
    method_cfg = config_cls(**{**recipe, steps_field: cfg.iterations, "seed": cfg.seed,
                               **({"lr": cfg.lr} if cfg.lr is not None else {})})
    before = evaluate(policy)
    t0 = time.time()
    log, hooks = MetricsLogger(), dict(eval_fn=evaluate, eval_every=cfg.eval_every)
    if cfg.method in ("ddpo", "ddpo_sf"):
        diffusion.train_ddpo(policy, reward_fn, method_cfg, logger=log, **hooks)
    elif cfg.method == "draft":
        diffusion.train_draft(policy, reward_fn, method_cfg, logger=log, **hooks)
    elif cfg.method == "flow_grpo":
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
    out = _finish(args, "diffusion", log, summary, plot_keys=[f"reward/{task}", "kl", "loss"], x="iteration")
    save_net(policy, Path(out["run_dir"]) / "model", {k: v for k, v in summary.items() if k != "run_dir"})
    return out
