"""`minirlhf baselines`: every method on the built-in world, one table.

Each row is one method run from the shipped checkpoints with a small CPU budget, evaluated the
same way as its siblings:

* reviews (preference world): gold reward and sequence KL(pi || review-sft) of one sample per
  held-out prompt (notebooks 02-04 go deeper);
* arithmetic (verifiable world): greedy accuracy on held-out chains, in and out of
  distribution, and KL(pi || arith-sft) (notebooks 05-06); pass@16 (32 samples at T = 1, 64 prompts)
  for SFT, GRPO and pass@k training, whose point is pass@k; RFT samples as many completions as GRPO
  (notebook 11, docs/rl_toolbox.md);
* 2-D points (diffusion world): fraction of samples in the target box and path KL to the
  base model (notebook 07).

The budgets are the CPU presets in the method configs, shortened; they show each method
moving, not its best result. Results go to runs/baselines/ (table.md, results.json, plot).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import torch

from .errors import ConfigError
from .evaluate import REVIEW_EVAL_PROMPTS, sequence_kl
from .runs import run_dir


@dataclass
class BaselinesConfig:
    """What `minirlhf baselines` runs."""

    only: str = ""
    """Comma-separated subset of rows to run (empty: all), e.g. "sft,dpo"."""
    seed: int = 0
    """Seed for every run."""


def _review_rows(seed: int) -> dict[str, dict]:
    from .dpo import DPOConfig, train_dpo
    from .models import ScalarHeadModel, load_model, load_tokenizer
    from .ppo import PPOConfig, train_ppo
    from .reward_model import RewardModelScorer, best_of_n
    from .worlds import reviews
    from .zoo import load_split

    tok = load_tokenizer()
    ref = load_model("review-sft").eval()
    rm = ScalarHeadModel.from_pretrained("review-rm").eval()
    prefs = load_split("reviews", "prefs_train")
    prompts = [r["prompt"] for r in prefs]  # 21 distinct prompts, repeated: PPO samples batches of them
    held_out = [r["prompt"] for r in load_split("reviews", "prompts_test")][:REVIEW_EVAL_PROMPTS]

    def review_eval(policy, ref, tok):  # gold reward and sequence KL(pi || review-sft), one sample per prompt
        return sequence_kl(policy, ref, tok, held_out, gold_fn=reviews.gold_rewards)

    def sft():
        return review_eval(ref, ref, tok)

    def bon16(reward_fn=None):
        out = best_of_n(ref, tok, held_out, 16, reward_fn or RewardModelScorer(rm, tok), max_new_tokens=64,
                        generator=torch.Generator().manual_seed(seed))
        n = 16  # KL of best-of-n (Stiennon et al., 2020): log n - (n - 1) / n
        return {"gold_reward": round(sum(reviews.gold_rewards(held_out, out["completions"])) / len(held_out), 4),
                "kl": round(float(torch.log(torch.tensor(n)) - (n - 1) / n), 4)}

    def bon16_defended(kind):
        def run():  # the same 16 samples per prompt as best-of-16 (review-rm), picked by a defended reward (notebook 09)
            from .reward_hacking.defences import EnsembleReward
            from .reward_hacking.ensemble_build import MEMBERS, WARM
            scorer = lambda m: RewardModelScorer(ScalarHeadModel.from_pretrained(m).eval(), tok)  # noqa: E731
            return bon16(EnsembleReward([scorer(m) for m in MEMBERS], "worst") if kind == "worst" else scorer(WARM))
        return run

    def ppo():
        policy = load_model("review-sft")
        _, policy = train_ppo(policy, tok, prompts, rm, PPOConfig(seed=seed), ref_model=ref)
        return review_eval(policy.eval(), ref, tok)

    def dpo(loss_type):
        def run():
            policy = load_model("review-sft")
            train_dpo(policy, tok, prefs[:2000], DPOConfig(loss_type=loss_type, seed=seed), ref_model=ref)
            return review_eval(policy.eval(), ref, tok)
        return run

    def bon16_rubric():  # the checklist rubric of notebook 10, weights fitted to gold on 2,000 SFT reviews
        from .judges.rubric import fitted_checklist
        return bon16(fitted_checklist())

    def online_dpo(judge="review-rm", **guards):
        def run():  # 3 rounds: 64 prompts x 4 samples, the judge picks best vs worst, DPO (notebook 10, sections 4-5)
            from .judges.factory import held_out_pointwise, make_judge
            from .judges.online_dpo import OnlineDPOConfig, online_dpo as run_online
            from .judges.pairwise import review_judging_rows
            start = "review-self" if judge == "self" else "review-sft"  # self-rewarding: a policy that can judge
            policy, start_ref = load_model(start), load_model(start).eval()
            extra = {"held_out_fn": held_out_pointwise(tok), "judge_rows": review_judging_rows(seed=seed),
                     "eval_prompts": held_out} if guards else {}  # the guards' KL is to the start, on held-out prompts
            run_online(policy, start_ref, tok, prompts, make_judge(judge, tok, 4, policy=policy),
                       OnlineDPOConfig(prompts_per_iteration=64, epochs=3.0, seed=seed, **guards,
                                       dpo=DPOConfig(steps=1, lr=3e-4, warmup_steps=0, log_every=1000)), **extra)
            return review_eval(policy.eval(), ref, tok)  # KL to review-sft, like every row
        return run

    return {"SFT (review-sft)": sft, "best-of-16 (review-rm)": bon16,
            "best-of-16 (ensemble worst-case)": bon16_defended("worst"), "best-of-16 (WARM)": bon16_defended("warm"),
            "best-of-16 (checklist rubric)": bon16_rubric, "online DPO (review-rm judge, 3 rounds)": online_dpo(),
            "online DPO (review-judge pairwise, 3 rounds)": online_dpo("review-judge"),
            "online DPO (review-judge pointwise, 3 rounds)": online_dpo("pointwise:review-judge"),
            "self-rewarding DPO (review-self, 3 rounds)": online_dpo("self"),
            "self-rewarding DPO, judge retrained + KL guard 25": online_dpo("self", judge_refresh_steps=20,
                                                                            max_kl=25.0),
            "PPO": ppo,
            "DPO": dpo("dpo"), "IPO": dpo("ipo"), "SimPO": dpo("simpo")}


def _arith_rows(seed: int) -> dict[str, dict]:
    from . import grpo, prm
    from .evaluate import eval_arithmetic
    from .lm import generate
    from .models import ScalarHeadModel, load_model, load_tokenizer
    from .worlds import arithmetic
    from .zoo import load_split

    tok = load_tokenizer()
    ref = load_model("arith-sft").eval()
    train_prompts = [r["prompt"] for r in load_split("arithmetic", "train")]
    test, ood = load_split("arithmetic", "test")[:200], load_split("arithmetic", "test_ood")[:200]

    def evaluate(policy):
        e = eval_arithmetic(policy, tok, test)
        return {"accuracy": e["accuracy"], "trace_accuracy": e["trace_accuracy"],
                "accuracy_ood": eval_arithmetic(policy, tok, ood)["accuracy"],
                **sequence_kl(policy, ref, tok, [r["prompt"] for r in test])}

    def pass_at_16(policy, n=32):  # unbiased pass@16 from 32 samples (T = 1) on 64 held-out prompts
        prompts = [r["prompt"] for r in test[:64] for _ in range(n)]
        comps, _ = generate(policy, tok, prompts, 64, temperature=1.0, generator=torch.Generator().manual_seed(seed),
                            batch_size=512)
        correct = arithmetic.arithmetic_trace_reward(prompts, comps)
        counts = [int(sum(correct[i:i + n])) for i in range(0, len(prompts), n)]
        return {"pass_at_16": round(sum(grpo.pass_at_k(n, c, 16) for c in counts) / len(counts), 4)}

    def grpo_config(name, **overrides):  # the notebook-05 recipe: lr 1e-4 with warm-up, one update per batch
        return grpo.preset(name, **{"seed": seed, "lr": 1e-4, "warmup_steps": 10, "mu": 1, "steps": 60,
                                    "eval_every": 0, **overrides})

    def variant(name, reward=arithmetic.arithmetic_trace_reward, with_pass_at_16=False, **overrides):
        def run():
            policy = load_model("arith-sft")
            grpo.train_grpo(policy, tok, train_prompts, [reward], grpo_config(name, **overrides))
            return {**evaluate(policy.eval()), **(pass_at_16(policy) if with_pass_at_16 else {})}
        return run

    def rft():  # rejection-sampling fine-tuning with the GRPO rows' samples: 4 rounds x 240 prompts x 8 = 7,680
        from .rft import budget_like, train_rft
        policy = load_model("arith-sft")
        train_rft(policy, tok, train_prompts, arithmetic.arithmetic_trace_reward, budget_like(grpo_config("grpo")))
        return evaluate(policy.eval())

    def best_of_16(verifier_name):
        def run():  # pick 1 of 16 samples (T = 1) per prompt on 50 held-out prompts
            n, rows = 16, test[:50]
            prompts = [r["prompt"] for r in rows for _ in range(n)]
            comps, _ = generate(ref, tok, prompts, 64, temperature=1.0,
                                generator=torch.Generator().manual_seed(seed), batch_size=512)
            if verifier_name == "arith-genrm":  # a generative verifier: p("Y") (notebook 10)
                from .judges.verdict import verdict_scores
                scores = verdict_scores(load_model(verifier_name).eval(), tok, prompts, comps)
            elif verifier_name == "arith-genrm-cot":  # GenRM-CoT: p(Y) after 8 sampled written checks, averaged
                from .judges.verdict import cot_verdict_scores
                scores = cot_verdict_scores(load_model(verifier_name).eval(), tok, prompts, comps, n_samples=8,
                                            generator=torch.Generator().manual_seed(seed + 1000))
            elif verifier_name == "arith-orm":
                scores = prm.orm_scores(ScalarHeadModel.from_pretrained(verifier_name).eval(), tok, prompts, comps)
            else:
                verifier = ScalarHeadModel.from_pretrained(verifier_name).eval()
                scores = prm.aggregate_steps(*prm.prm_step_scores(verifier, tok, prompts, comps), "min")
            checks = [arithmetic.check_chain(p, c) for p, c in zip(prompts, comps)]
            answer = torch.tensor([c.answer_correct for c in checks]).view(len(rows), n)
            trace = torch.tensor([c.trace_correct for c in checks]).view(len(rows), n)
            scores = scores.view(len(rows), n)
            return {"accuracy": round(prm.best_of_n(scores, answer).float().mean().item(), 4),
                    "trace_accuracy": round(prm.best_of_n(scores, trace).float().mean().item(), 4),
                    "kl": round(float(torch.log(torch.tensor(n)) - (n - 1) / n), 4)}
        return run

    return {"SFT (arith-sft)": lambda: {**evaluate(ref), **pass_at_16(ref)},
            "GRPO, answer reward": variant("grpo", arithmetic.arithmetic_reward),
            "GRPO, trace reward": variant("grpo", with_pass_at_16=True), "Dr. GRPO": variant("dr_grpo"),
            "DAPO": variant("dapo"), "RLOO": variant("rloo"),
            # pass@k training (Chen et al. 2025; k 4, beta 0): same pass@1 as GRPO, higher pass@16 (docs/rl_toolbox.md)
            "GRPO, pass@k advantages (k 4)": variant("pass_at_k", with_pass_at_16=True),
            "RFT (rejection sampling + SFT, same samples)": rft,
            # the positive-only policy gradient (Xiong et al. 2025): its preset's own batch shape and step size
            # (15,360 samples), not the notebook-05 recipe grpo_config puts on the other rows
            "RAFT++ (positive-only PG, 6 x 320 x 8)": variant("raft_pp", **{
                k: getattr(grpo.preset("raft_pp"), k) for k in ("lr", "warmup_steps", "mu", "steps")}),
            "best-of-16 (arith-orm)": best_of_16("arith-orm"),
            "best-of-16 (arith-prm-gold, min)": best_of_16("arith-prm-gold"),
            "best-of-16 (arith-genrm)": best_of_16("arith-genrm"),
            "best-of-16 (arith-genrm-cot, 8 checks averaged)": best_of_16("arith-genrm-cot")}


def _diffusion_rows(seed: int) -> dict[str, dict]:
    from .diffusion import (DDPOConfig, FlowGRPOConfig, evaluate_policy, frozen_copy, load_diffusion_model,
                            train_ddpo, train_flow_grpo)
    from .diffusion.adjoint import MEMORYLESS, AdjointMatchingConfig, train_adjoint_matching
    from .diffusion.reward_weighted import RewardWeightedConfig, train_reward_weighted
    from .diffusion.rewards import box_distance_reward, box_reward
    from .diffusion.target import distance_report

    def run(model_name, train, cfg):
        def go():
            torch.manual_seed(seed)
            policy = load_diffusion_model(model_name)
            ref = frozen_copy(policy)
            before = evaluate_policy(policy, ref, {"box": box_reward})["reward/box"]
            if train is not None:
                train(policy, box_reward, cfg)
            m = evaluate_policy(policy, ref, {"box": box_reward})
            return {"box_reward_before": round(before, 4), "box_reward": round(m["reward/box"], 4),
                    "kl": round(m["kl"], 4)}
        return go

    def exact(train, cfg):
        """Notebook 12: a method aiming at p* = p_base exp(r / beta) / Z (beta = 1, r = -distance to the box);
        the row adds its distance to p* (target.smoothed_kl, 512 samples per label, memoryless SDE)."""
        def go():
            torch.manual_seed(seed)
            policy = load_diffusion_model("diffusion-points-flow")
            ref = frozen_copy(policy)
            if train is not None:
                train(policy, box_distance_reward, cfg)
            m = evaluate_policy(policy, ref, {"box": box_reward})
            report = distance_report(policy, box_distance_reward, 1.0, MEMORYLESS["flow"], seed=seed)
            return {"box_reward": round(m["reward/box"], 4), "kl": round(m["kl"], 4), **report}
        return go

    return {"diffusion: base DDPM": run("diffusion-points-ddpm", None, None),
            "diffusion: DDPO_IS": run("diffusion-points-ddpm", train_ddpo, DDPOConfig(iterations=30, lr=3e-4)),
            "diffusion: Flow-GRPO": run("diffusion-points-flow", train_flow_grpo, FlowGRPOConfig(iterations=30)),
            "diffusion: base flow vs p*": exact(None, None),
            "diffusion: adjoint matching": exact(train_adjoint_matching, AdjointMatchingConfig(
                iterations=40, batch_size=128, lr=2e-3, seed=seed)),
            "diffusion: DPOK": exact(train_ddpo, DDPOConfig(eta=MEMORYLESS["flow"], kl_coef=1.0, normalize_advantages=False,
                                                            iterations=30, lr=1e-3, seed=seed)),
            "diffusion: reward-weighted FM": exact(train_reward_weighted, RewardWeightedConfig(
                iterations=150, samples_per_label=512, seed=seed))}


def _table(results: dict[str, dict]) -> str:
    cols = ["gold_reward", "accuracy", "trace_accuracy", "accuracy_ood", "pass_at_16", "box_reward",
            "distance_to_target", "kl", "seconds"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in results.items():
        cells = [("" if r.get(c) is None else f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c])) for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_baselines(args, cfg: BaselinesConfig) -> dict:
    torch.manual_seed(cfg.seed)
    rows = {**_review_rows(cfg.seed), **_arith_rows(cfg.seed), **_diffusion_rows(cfg.seed)}
    wanted = [w.strip().lower() for w in cfg.only.split(",") if w.strip()]
    unmatched = [w for w in wanted if not any(w in name.lower() for name in rows)]
    if unmatched:
        raise ConfigError(f"--only {','.join(unmatched)} matches no row; rows: {', '.join(rows)}")
    results, t_all = {}, time.time()
    for name, fn in rows.items():
        if wanted and not any(w in name.lower() for w in wanted):
            continue
        t0 = time.time()
        print(f"[baselines] {name} ...", flush=True)
        results[name] = {**fn(), "seconds": round(time.time() - t0, 1)}
        print(f"[baselines] {name}: {results[name]}", flush=True)
    out = run_dir(args.name or "baselines")
    table = _table(results)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(table)
    return {"rows": len(results), "minutes": round((time.time() - t_all) / 60, 1), "run_dir": str(out)}
