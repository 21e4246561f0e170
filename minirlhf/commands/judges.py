"""`minirlhf judge` (evaluate or train a judge) and `minirlhf dpo --online --judge ...` (online DPO).

    minirlhf judge --kind pairwise                 # the shipped review-judge: gold agreement, position and length bias
    minirlhf judge --kind genrm                    # the shipped arith-genrm: within-prompt AUC and best-of-N
    minirlhf judge --kind genrm-cot --checks 8     # arith-genrm-cot: a written check first, 8 checks averaged
    minirlhf judge --kind pairwise --train-steps 100 --name my-judge   # train a small one first, then evaluate it
    minirlhf dpo --online --judge review-rm --iterations 3              # sample -> judge -> DPO, 3 rounds
    minirlhf dpo --online --judge pointwise:review-judge               # the generative judge grading one review
    minirlhf dpo --online --judge self --max-kl 25 --judge-refresh-steps 20   # self-rewarding, guarded
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..errors import ConfigError, check_config
from ..judges.factory import held_out_pointwise, make_judge, parse_judge
from ..runs import finish, metrics_logger
from ..utils import MetricsLogger

JUDGE_KINDS = ("pairwise", "genrm", "genrm-cot")
DEFAULT_JUDGE = {"pairwise": "review-judge", "genrm": "arith-genrm", "genrm-cot": "arith-genrm-cot"}


@dataclass
class JudgeRunConfig:
    """`minirlhf judge`: evaluate a generative judge on the built-in worlds (optionally train one first)."""

    kind: str = "pairwise"
    """pairwise (reviews: 'which is better, A or B?'), genrm (arithmetic: 'Is it right?' -> Y/N) or genrm-cot
    (arithmetic: a written check, 'step k wrong' / 'all steps right', then Y/N; Zhang et al. 2024's GenRM-CoT)."""
    train_steps: int = 0
    """0: evaluate `--model` (default the shipped judge); > 0: first fine-tune a judge this many SFT steps
    from its backbone (review-sft / arith-sft-full) on gold-labelled rows, as `python -m minirlhf.zoo --only judges`."""
    pairs: int = 400
    """pairwise: held-out prefs_test pairs judged in both orders."""
    prompts: int = 30
    """genrm: held-out test prompts ..."""
    samples: int = 16
    """... each with this many arith-sft samples to rank (best-of-N up to this N)."""
    checks: int = 4
    """genrm-cot: written checks sampled (T = 1) per solution, p(Y) after each averaged (test-time scaling);
    0: one greedy check."""
    seed: int = 0
    """Seed of sampling."""

    def validate(self) -> None:
        check_config(self, at_least_1=("pairs", "prompts", "samples"), non_negative=("train_steps", "checks"),
                     choices={"kind": JUDGE_KINDS})


def judge_args(p):
    p.add_argument("--model", default=None, help="the judge: a causal LM folder or built-in name "
                   "(default: review-judge for --kind pairwise, arith-genrm for --kind genrm, arith-genrm-cot for "
                   "--kind genrm-cot)")


def _evaluate_pairwise(model, tok, cfg: JudgeRunConfig) -> dict:
    from ..judges import pairwise
    from ..worlds import reviews
    from ..zoo import load_split

    rows = load_split("reviews", "prefs_test")[:cfg.pairs]
    ps, a, b = [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows]
    ga = torch.tensor([reviews.gold_reward(p + x) for p, x in zip(ps, a)])
    gb = torch.tensor([reviews.gold_reward(p + x) for p, x in zip(ps, b)])
    both = pairwise.judge_both_orders(lambda p, x, y: pairwise.pairwise_probs(model, tok, p, x, y), ps, a, b)
    la, lb = torch.tensor([len(x) for x in a]), torch.tensor([len(x) for x in b])
    pa, pb = pairwise.pointwise_probs(model, tok, ps, a), pairwise.pointwise_probs(model, tok, ps, b)
    return {"gold_agreement_one_order": round(pairwise.gold_agreement(both["p_ab"], ga, gb), 4),
            "gold_agreement_both_orders": round(pairwise.gold_agreement(both["p"], ga, gb), 4),
            "gold_agreement_pointwise": round(pairwise.gold_agreement(0.5 + 0.5 * (pa - pb), ga, gb), 4),
            **{k: round(v, 4) for k, v in pairwise.position_bias(both["p_ab"], both["p_ba"]).items()},
            "length_bias": round(pairwise.length_bias(both["p"], la, lb), 4),
            "gold_length_correlation": round(pairwise.length_bias((ga > gb).double(), la, lb), 4)}


def _evaluate_genrm(model, tok, cfg: JudgeRunConfig) -> dict:
    from ..judges import verdict
    from ..lm import generate
    from ..models import load_model
    from ..prm import best_of_n_curve, within_prompt_auc
    from ..worlds.arithmetic import check_chain
    from ..zoo import load_split

    sft = load_model("arith-sft").eval()
    prompts = [r["prompt"] for r in load_split("arithmetic", "test")[:cfg.prompts] for _ in range(cfg.samples)]
    comps, _ = generate(sft, tok, prompts, 80, 1.0, generator=torch.Generator().manual_seed(cfg.seed), batch_size=512)
    trace = torch.tensor([check_chain(p, c).trace_correct for p, c in zip(prompts, comps)]).view(cfg.prompts, -1)
    if cfg.kind == "genrm-cot":  # a written check first, then the verdict; averaged over cfg.checks samples
        s = verdict.cot_verdict_scores(model, tok, prompts, comps, n_samples=max(cfg.checks, 1),
                                       temperature=1.0 if cfg.checks else 0.0,
                                       generator=torch.Generator().manual_seed(cfg.seed + 1))
    else:
        s = verdict.verdict_scores(model, tok, prompts, comps)
    s = s.view(cfg.prompts, -1)
    curve = best_of_n_curve(s, trace, [1, cfg.samples], seed=cfg.seed)
    return {"within_prompt_trace_auc": round(within_prompt_auc(s, trace), 4),
            "trace@1": round(curve[0], 4), f"trace@{cfg.samples}": round(curve[1], 4),
            f"oracle@{cfg.samples}": round(trace.any(1).float().mean().item(), 4)}


def run_judge(args, cfg: JudgeRunConfig) -> dict:
    from ..models import load_model, load_tokenizer

    tok = load_tokenizer()
    t0 = time.time()
    name = args.model or DEFAULT_JUDGE[cfg.kind]
    if cfg.train_steps:
        from ..judges.build import JudgeBuildConfig, train_genrm, train_review_judge

        bcfg = JudgeBuildConfig(genrm_steps=cfg.train_steps, judge_steps=cfg.train_steps, seed=cfg.seed,
                                genrm_samples=max(cfg.train_steps * 8, 256), judge_pairs=max(cfg.train_steps * 8, 256),
                                judge_points=max(cfg.train_steps * 2, 64))
        model = (train_review_judge(bcfg, tok, args.model) if cfg.kind == "pairwise" else
                 train_genrm(bcfg, tok, args.model, with_rationale=cfg.kind == "genrm-cot"))[0]
        name = f"{args.model or ('review-sft' if cfg.kind == 'pairwise' else 'arith-sft-full')} + {cfg.train_steps} SFT steps"
    else:
        model = load_model(name).eval()
    metrics = (_evaluate_pairwise if cfg.kind == "pairwise" else _evaluate_genrm)(model, tok, cfg)
    for k, v in metrics.items():
        print(f"{k:32s} {v}")
    summary = {"method": f"judge ({cfg.kind})", "model": name, **metrics, "seconds": round(time.time() - t0, 1)}
    return finish(args, "judge", MetricsLogger(), summary, model if cfg.train_steps else None, tok)


# ---------------------------------------------------------------------------------------------
# dpo --online
# ---------------------------------------------------------------------------------------------


ONLINE_JUDGE_KINDS = ("reward-model", "pairwise", "pointwise", "self", "rubric", "gold")
def online_dpo_args(p):
    p.add_argument("--online", action="store_true", help="online DPO: each round the policy samples --k responses "
                   "per prompt, --judge ranks them, DPO on best vs worst (Guo et al. 2024; Yuan et al. 2024)")
    p.add_argument("--judge", default=None, help="with --online: review-rm (the reward model, default), "
                   "review-judge (generative, pairwise round robin), pointwise:review-judge (its p('Y') to 'Good? '), "
                   "self (the policy judges itself by p('Y'); --model defaults to review-self), rubric (the reviews "
                   "checklist), gold; or KIND:FOLDER with KIND reward-model, pairwise or pointwise")
    p.add_argument("--iterations", type=int, default=None, help="with --online: rounds (default 3)")
    p.add_argument("--k", type=int, default=None, help="with --online: responses per prompt (default 4)")
    p.add_argument("--prompts-per-iteration", type=int, default=None, help="with --online: prompts per round (default 64)")
    p.add_argument("--max-kl", type=float, default=None, help="with --online: guard: a round that leaves the KL to the "
                   "reference above this is undone and the loop stops (default off)")
    p.add_argument("--min-held-out-agreement", type=float, default=None, help="with --online --judge self: guard: stop "
                   "(undo the round) when the self-judge agrees with gold on fewer than this fraction of 400 held-out "
                   "pairs (default off)")
    p.add_argument("--guard-action", default=None, help="with --online: stop (default: undo the round, "
                   "end) or flag (log it, go on)")
    p.add_argument("--judge-refresh-steps", type=int, default=None, help="with --online --judge self: SFT steps on the "
                   "judging rows after each round's DPO (retrain the judging skill; default 0)")


def run_online_dpo(args, cfg) -> dict:
    from ..judges.online_dpo import OnlineDPOConfig, kept_rows, online_dpo
    from ..models import load_model, load_tokenizer
    from ..worlds.reviews import gold_rewards
    from ..zoo import load_split

    if args.dataset is not None:
        raise ConfigError("--online samples its own responses from the built-in reviews prompts; drop --dataset")
    judge_name = args.judge or "review-rm"
    kind, judge_model = parse_judge(judge_name)  # a bad --judge is one line, before anything loads
    ocfg = OnlineDPOConfig(iterations=args.iterations or 3, k=args.k or 4,
                           prompts_per_iteration=args.prompts_per_iteration or 64, dpo=cfg, seed=cfg.seed,
                           max_kl=args.max_kl or 0.0, min_held_out_agreement=args.min_held_out_agreement or 0.0,
                           guard_action=args.guard_action or "stop", judge_refresh_steps=args.judge_refresh_steps or 0)
    ocfg.validate()
    if kind != "self" and (ocfg.min_held_out_agreement or ocfg.judge_refresh_steps):
        raise ConfigError("--min-held-out-agreement and --judge-refresh-steps act on a judge that trains with the "
                          f"policy: use them with --judge self (got --judge {judge_name})")
    if judge_model is not None:
        from ..models import _resolve, check_model_folder
        name, local = _resolve(judge_model)
        if local:  # a missing or empty judge folder is one line before the policy loads
            check_model_folder(name)
    model_name = args.model or ("review-self" if kind == "self" else "review-sft")
    tok = load_tokenizer(model_name if args.model else "tokenizer")
    policy, ref = load_model(model_name), load_model(model_name).eval()
    judge = make_judge(judge_name, tok, ocfg.k, policy=policy)
    prompts = [r["prompt"] for r in load_split("reviews", "prefs_train")]
    evals = [r["prompt"] for r in load_split("reviews", "prompts_test")[:128]]
    extra = {}
    if kind == "self":
        from ..judges.pairwise import review_judging_rows
        extra["held_out_fn"] = held_out_pointwise(tok)
        if ocfg.judge_refresh_steps:
            extra["judge_rows"] = review_judging_rows(seed=cfg.seed)
    t0 = time.time()
    log = online_dpo(policy, ref, tok, prompts, judge, ocfg, gold_fn=gold_rewards, eval_prompts=evals,
                     logger=metrics_logger(args, "dpo-online", cfg), **extra)
    for r in log.rows:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})
    kept = kept_rows(log.rows)
    last = kept[-1] if kept else {}
    summary = {"method": f"online {cfg.loss_type} (judge {judge_name}, k={ocfg.k})", "model": model_name,
               "iterations": len(kept), "pairs": sum(r["pairs"] for r in kept),
               "gold_reward": last.get("eval/gold"), "kl": last.get("eval/kl", 0.0 if not kept else None),
               "judge_gold_agreement": [round(r.get("judge_gold_agreement", float("nan")), 4) for r in log.rows],
               **({"held_out_agreement": [round(r["judge/held_out_agreement"], 4) for r in log.rows]}
                  if kind == "self" else {}),
               "guard": next((r["guard"] for r in log.rows if "guard" in r), None),
               "seconds": round(time.time() - t0, 1)}
    return finish(args, "dpo-online", log, summary, policy, tok, ["eval/gold", "eval/kl", "judge_gold_agreement"],
                  x="iteration")
