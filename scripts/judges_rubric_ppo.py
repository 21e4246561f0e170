"""PPO against a learned rubric vs a rule-based rubric vs the holistic reward model: over-optimisation at equal KL
(issue 17 item 2, docs/judges.md "Rubric rewards").

    python -m minirlhf.zoo --only rubric-judge      # the learned judge (review-rubric)
    OMP_NUM_THREADS=1 python scripts/judges_rubric_ppo.py --seeds 0 1 2 --runs 2 --out docs/judges_rubric_ppo.json

Per seed, as notebook 10 sections 3 and 6: 256 review-sft samples (T = 1) fit both rubrics' weights to gold (the
rule-based `rubric.CHECKLIST` and the learned `review-rubric`'s per-question p(Y)); 1,536 more give each proxy's sd.
Then `--runs` PPO runs per reward (notebook 03's recipe, `PPOConfig()` defaults, 25 steps, PPO seed = seed + 100 r)
against review-rm, the checklist and the learned rubric; every 5 steps the same 96 held-out prompts are sampled (a
fixed generator) and each proxy and gold are scored per prompt. The gap at equal KL (`rubric.gap_at_kl`) is read on
each run's mean curve at the largest KL all three runs of a (seed, run) reach; its interval is a bootstrap over the
96 prompts (the KL axis held at its full-sample mean), averaged over the runs of the seed, and across all
seed x run pairs a t-interval (mean +- 1.96 se) over the (seeds x runs) paired differences.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from minirlhf.judges import rubric, rubric_learned as rl
from minirlhf.lm import generate
from minirlhf.models import ScalarHeadModel, load_model, load_tokenizer
from minirlhf.ppo import PPOConfig, train_ppo
from minirlhf.reward_model import RewardModelScorer
from minirlhf.stats import mean_se
from minirlhf.worlds import reviews
from minirlhf.zoo import load_split

P_BON, M_BON, N_FIT, N_EVAL, STEPS = 48, 32, 256, 96, 25
NAMES = ("review-rm", "checklist rubric", "learned rubric")


def run_seed(seed: int, runs: int, n_boot: int, tok, models) -> dict:
    g = torch.Generator().manual_seed(seed)
    sft, rm, judge = models["review-sft"], models["review-rm"], models["review-rubric"]
    rm_score = RewardModelScorer(rm, tok)
    eval_prompts = [r["prompt"] for r in load_split("reviews", "prompts_test")]
    fit_p = [eval_prompts[P_BON + i % (len(eval_prompts) - P_BON)] for i in range(N_FIT)]
    fit_c, _ = generate(sft, tok, fit_p, 64, temperature=1.0, generator=g, batch_size=512)
    fit_gold = reviews.gold_rewards(fit_p, fit_c)
    checklist, cb = rubric.fit_weights(rubric.CHECKLIST, [p + c for p, c in zip(fit_p, fit_c)], fit_gold)
    learned = rl.fit_learned_rubric(judge, tok, fit_p, fit_c, fit_gold)
    scorers = {"review-rm": rm_score, "checklist rubric": rubric.RubricScorer(checklist, cb), "learned rubric": learned}
    rep = [p for p in eval_prompts[:P_BON] for _ in range(M_BON)]
    bon_c, _ = generate(sft, tok, rep, 64, temperature=1.0, generator=g, batch_size=512)
    sd = {n: torch.tensor(s(rep, bon_c)).std().item() for n, s in scorers.items()}
    sd_gold = torch.tensor(reviews.gold_rewards(rep, bon_c)).std().item()
    kl_prompts = eval_prompts[P_BON:P_BON + N_EVAL]
    train_prompts = [r["prompt"] for r in load_split("reviews", "prefs_train")]
    out = {"weights": {"checklist": {c.name: round(c.weight, 3) for c in checklist} | {"bias": round(cb, 3)},
                       "learned": {q.name: round(w, 3) for q, w in zip(rl.QUESTIONS, learned.weights.tolist())}
                       | {"bias": round(learned.bias, 3)}},
           "sd": sd, "sd_gold": sd_gold, "runs": []}
    for r in range(runs):
        curves = {}
        for name in NAMES:
            evals = []  # per eval: the decoded completions on kl_prompts

            def gold_fn(prompts, comps, evals=evals):
                if len(prompts) == len(kl_prompts) and prompts == kl_prompts:
                    evals.append(list(comps))
                return reviews.gold_rewards(prompts, comps)

            reward = rm if name == "review-rm" else scorers[name]
            c0, t0 = time.process_time(), time.time()
            log_, _ = train_ppo(load_model("review-sft"), tok, train_prompts, reward,
                                PPOConfig(steps=STEPS, eval_every=5, seed=seed + 100 * r), ref_model=sft,
                                gold_fn=gold_fn, eval_prompts=kl_prompts)
            cpu = time.process_time() - c0
            ev = [row for row in log_.rows if "eval/gold" in row]
            kl = [row["eval/kl"] for row in ev]
            per = {"gold": torch.tensor([reviews.gold_rewards(kl_prompts, c) for c in evals], dtype=torch.float64)}
            for n2, s in scorers.items():  # every proxy on every eval's samples, per prompt: (E, P)
                per[n2] = torch.tensor([s(kl_prompts, c) for c in evals], dtype=torch.float64)
            final_text = [p + c for p, c in zip(kl_prompts, evals[-1])]
            acc = rl.criterion_accuracy(learned.probs(kl_prompts, evals[-1]), rl.criterion_labels(final_text))
            curves[name] = {"kl": kl, "per": per, "cpu_s": round(cpu, 1), "wall_s": round(time.time() - t0, 1),
                            "judge_acc_final": {k: round(v, 3) for k, v in acc.items()},
                            "logged_proxy": [row["eval/scores"] for row in ev]}
            print(f"seed {seed} run {r} {name}: KL {kl[-1]:.2f}, gold {per['gold'][-1].mean():+.3f}, "
                  f"{cpu:.0f} CPU s, judge acc on final samples "
                  f"{ {q.name: round(acc[q.name], 2) for q in rl.QUESTIONS} }", flush=True)
        kl_common = min(max(c["kl"]) for c in curves.values())
        grid = [kl_common * f for f in (0.25, 0.5, 0.75, 1.0)]

        def gaps(idx):  # gap of each run on the grid, from the per-prompt values restricted to prompts idx
            return {n: [rubric.gap_at_kl(c["kl"], c["per"][n][:, idx].mean(1).tolist(),
                                         c["per"]["gold"][:, idx].mean(1).tolist(), k, sd[n], sd_gold) for k in grid]
                    for n, c in curves.items()}

        full = gaps(torch.arange(N_EVAL))
        gb = torch.Generator().manual_seed(seed * 1000 + r)
        boots = [gaps(torch.randint(0, N_EVAL, (N_EVAL,), generator=gb)) for _ in range(n_boot)]
        gold_at = {n: [rubric.value_at_kl(c["kl"], c["per"]["gold"].mean(1).tolist(), k) for k in grid]
                   for n, c in curves.items()}
        cross = {n: {n2: (c["per"][n2][-1].mean() - c["per"][n2][0].mean()).item() / sd[n2] for n2 in scorers}
                 for n, c in curves.items()}  # each run's final samples rated by every proxy (sd units gained)
        out["runs"].append({"run": r, "ppo_seed": seed + 100 * r, "kl_common": kl_common, "kl_grid": grid,
                            "gap": full, "gold_at_kl": gold_at, "cross_proxy_gain_sd": cross,
                            "boot_gap_last": {n: [b[n][-1] for b in boots] for n in NAMES},
                            "curves": {n: {"kl": c["kl"], "gold": c["per"]["gold"].mean(1).tolist(),
                                           "proxy": c["per"][n].mean(1).tolist(), "logged_proxy": c["logged_proxy"],
                                           "cpu_s": c["cpu_s"], "wall_s": c["wall_s"],
                                           "judge_acc_final": c["judge_acc_final"]} for n, c in curves.items()}})
    return out


def summarise(res: dict) -> dict:
    """Per seed: the gap differences at the common KL, averaged over runs, with the prompt-bootstrap interval;
    over all (seed, run) pairs: mean +- 1.96 se."""
    pairs = [("review-rm", "checklist rubric"), ("review-rm", "learned rubric"), ("learned rubric", "checklist rubric")]
    summ, allpairs = {}, {f"{a} - {b}": [] for a, b in pairs}
    for seed, s in res.items():
        row = {}
        for n in NAMES:
            row[f"gap {n}"] = [round(run["gap"][n][-1], 3) for run in s["runs"]]
            row[f"gold {n}"] = [round(run["gold_at_kl"][n][-1], 3) for run in s["runs"]]
        row["kl_common"] = [round(run["kl_common"], 2) for run in s["runs"]]
        for a, b in pairs:
            d = [run["gap"][a][-1] - run["gap"][b][-1] for run in s["runs"]]
            allpairs[f"{a} - {b}"] += d
            boot = torch.tensor([[x - y for x, y in zip(run["boot_gap_last"][a], run["boot_gap_last"][b])]
                                 for run in s["runs"]]).mean(0)  # (n_boot,) mean over runs
            lo, hi = torch.quantile(boot.double(), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
            row[f"{a} - {b}"] = {"value": round(sum(d) / len(d), 3), "lo": round(lo, 3), "hi": round(hi, 3),
                                 "per_run": [round(x, 3) for x in d]}
        summ[seed] = row
    summ["all"] = {k: mean_se(v).as_dict(3) for k, v in allpairs.items()}
    return summ


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs", type=int, default=2, help="PPO runs per reward per seed (PPO seed = seed + 100 r)")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples of the eval prompts")
    ap.add_argument("--out", default="docs/judges_rubric_ppo.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = load_tokenizer()
    models = {"review-sft": load_model("review-sft").eval(),
              "review-rm": ScalarHeadModel.from_pretrained("review-rm").eval(),
              "review-rubric": load_model("review-rubric").eval()}
    res, c0 = {}, time.process_time()
    for seed in args.seeds:
        res[str(seed)] = run_seed(seed, args.runs, args.boot, tok, models)
        summ = summarise(res)
        with open(args.out, "w") as f:
            json.dump({"summary": summ, "seeds": res, "cpu_s": round(time.process_time() - c0, 1)}, f, indent=1)
        print(json.dumps(summ[str(seed)], indent=1), flush=True)
    print(json.dumps(summarise(res)["all"], indent=1))


if __name__ == "__main__":
    main()
