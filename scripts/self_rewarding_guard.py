"""Self-rewarding DPO with what a practitioner adds: guards and a retrained judging skill (docs/judges.md).

    OMP_NUM_THREADS=1 python scripts/self_rewarding_guard.py --seeds 0 1 2 --out docs/judges_self_rewarding.json
    OMP_NUM_THREADS=1 python scripts/self_rewarding_guard.py --part online --out docs/judges_online_dpo.json

`--part online`: notebook 10's section 4 (online DPO from review-sft) with each outside judge: review-rm, review-judge
as a pairwise round robin, review-judge grading one review at a time (pointwise p(Y)); offline DPO on as many
dataset pairs and steps as the review-rm run.

Each run is notebook 10's section 5 exactly (`review-self` judges its own k = 4 samples by its pointwise p(Y),
3 rounds x 64 prompts, DPO lr 3e-4, beta 0.1, 3 epochs; 96 held-out prompts for gold and KL; section 2's 400
held-out pairs, a different slice per seed, for the self-judge's held-out agreement), with one change per variant:

* plain                 the notebook's loop;
* KL guard              a round that ends above KL 25 to review-self is undone and the loop stops (gold-free);
* held-out guard        the same when the self-judge's held-out agreement falls below 0.6;
* judge refresh         after each round's DPO, 20 SFT steps (lr 3e-4, 32 rows) on review-self's judging rows;
* refresh + writing     the same with review-self's writing rows mixed in (its whole build mix, IFT + EFT);
* RPO (NLL on chosen)   DPO + 1.0 x NLL of the chosen response (Pang et al. 2024's iterative RPO).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace

import torch

from minirlhf.dpo import DPOConfig
from minirlhf.evaluate import sequence_kl
from minirlhf.judges import online_dpo as odpo, pairwise
from minirlhf.models import load_model, load_tokenizer
from minirlhf.worlds import reviews
from minirlhf.zoo import load_split

KL_BUDGET, AGREE_FLOOR, REFRESH_STEPS = 25.0, 0.6, 20


def variants() -> dict[str, dict]:
    base = odpo.OnlineDPOConfig(iterations=3, prompts_per_iteration=64, k=4, epochs=3.0,
                                dpo=DPOConfig(steps=1, batch_size=16, lr=3e-4, warmup_steps=0, beta=0.1,
                                              log_every=1000))
    return {"plain": {"cfg": base},
            "KL guard": {"cfg": replace(base, max_kl=KL_BUDGET)},
            "held-out guard": {"cfg": replace(base, min_held_out_agreement=AGREE_FLOOR)},
            "judge refresh": {"cfg": replace(base, judge_refresh_steps=REFRESH_STEPS), "rows": "judge"},
            "refresh + writing": {"cfg": replace(base, judge_refresh_steps=REFRESH_STEPS), "rows": "judge+write"},
            "RPO (NLL on chosen)": {"cfg": replace(base, dpo=replace(base.dpo, rpo_alpha=1.0))}}


def run_seed(seed: int, tok, only: list[str] | None = None) -> dict:
    eval_prompts = [r["prompt"] for r in load_split("reviews", "prompts_test")]
    kl_prompts = eval_prompts[48:48 + 96]  # notebook 10's P_BON = 48
    test = load_split("reviews", "prefs_test")
    start = (seed * 400) % (len(test) - 400)
    pairs = test[start:start + 400]
    held_out = pairwise.pointwise_agreement_fn(tok, pairs, reviews.gold_reward)

    judge_rows = pairwise.review_judging_rows(seed=0)
    write_rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in load_split("reviews", "sft")[-2500:]]
    mixed = judge_rows + write_rows
    random.Random(0).shuffle(mixed)
    train_prompts = [r["prompt"] for r in load_split("reviews", "prefs_train")]
    start_model = load_model("review-self").eval()
    start_eval = sequence_kl(start_model, start_model, tok, kl_prompts, 64, gold_fn=reviews.gold_rewards)
    out = {"start": {"gold": start_eval["gold_reward"], "held_out_agreement": held_out(start_model)}}
    for name, v in variants().items():
        if only and name not in only:
            continue
        c0, t0 = time.process_time(), time.time()
        policy, ref = load_model("review-self"), load_model("review-self").eval()
        rows = odpo.online_dpo(policy, ref, tok, train_prompts, odpo.self_judge(policy, tok, pairwise.pointwise_probs),
                               replace(v["cfg"], seed=seed), gold_fn=reviews.gold_rewards, eval_prompts=kl_prompts,
                               held_out_fn=held_out,
                               judge_rows={"judge": judge_rows, "judge+write": mixed}.get(v.get("rows"))).rows
        kept = odpo.kept_rows(rows)
        final = kept[-1] if kept else {"eval/gold": out["start"]["gold"], "eval/kl": 0.0,
                                       "judge/held_out_agreement": out["start"]["held_out_agreement"]}
        out[name] = {"rounds": [{k: (round(x, 4) if isinstance(x, float) else x) for k, x in r.items()} for r in rows],
                     "final_gold": final["eval/gold"], "final_kl": final["eval/kl"],
                     "final_held_out_agreement": round(final["judge/held_out_agreement"], 4),
                     "guard": next((r["guard"] for r in rows if "guard" in r), None),
                     "cpu_s": round(time.process_time() - c0, 1), "wall_s": round(time.time() - t0, 1)}
        print(f"seed {seed} {name:22s} gold {[r.get('eval/gold') for r in rows]} KL {[r.get('eval/kl') for r in rows]} "
              f"held {[round(r['judge/held_out_agreement'], 3) for r in rows]} guard {out[name]['guard']} "
              f"({out[name]['cpu_s']} CPU s)", flush=True)
    return out


def run_online_seed(seed: int, tok) -> dict:
    from minirlhf.dpo import train_dpo
    from minirlhf.models import ScalarHeadModel
    from minirlhf.reward_model import RewardModelScorer

    kl_prompts = [r["prompt"] for r in load_split("reviews", "prompts_test")][48:48 + 96]
    train_prompts = [r["prompt"] for r in load_split("reviews", "prefs_train")]
    cfg = replace(variants()["plain"]["cfg"], seed=seed)
    judge_model = load_model("review-judge").eval()
    judges = {"review-rm": RewardModelScorer(ScalarHeadModel.from_pretrained("review-rm").eval(), tok),
              "review-judge, pairwise": lambda ps_, cs_: pairwise.group_scores_from_pairs(
                  lambda p, x, y: pairwise.pairwise_probs(judge_model, tok, p, x, y), ps_, cs_, cfg.k),
              "review-judge, pointwise": lambda ps_, cs_: pairwise.pointwise_probs(judge_model, tok, ps_, cs_).tolist()}
    sft = load_model("review-sft").eval()
    out = {"start": sequence_kl(sft, sft, tok, kl_prompts, 64, gold_fn=reviews.gold_rewards)}
    for name, jf in judges.items():
        c0 = time.process_time()
        policy = load_model("review-sft")
        rows = odpo.online_dpo(policy, load_model("review-sft").eval(), tok, train_prompts, jf, cfg,
                               gold_fn=reviews.gold_rewards, eval_prompts=kl_prompts).rows
        out[name] = {"rounds": [{k: (round(x, 4) if isinstance(x, float) else x) for k, x in r.items()} for r in rows],
                     "final_gold": rows[-1]["eval/gold"], "final_kl": rows[-1]["eval/kl"],
                     "cpu_s": round(time.process_time() - c0, 1)}
        print(f"seed {seed} online {name:24s} gold {[r['eval/gold'] for r in rows]} KL {[r['eval/kl'] for r in rows]} "
              f"agree {[round(r['judge_gold_agreement'], 3) for r in rows]} ({out[name]['cpu_s']} CPU s)", flush=True)
    n_pairs = sum(r["pairs"] for r in out["review-rm"]["rounds"])
    n_steps = sum(r["dpo_steps"] for r in out["review-rm"]["rounds"])
    off_rows = [load_split("reviews", "prefs_train")[i] for i in
                torch.randperm(10000, generator=torch.Generator().manual_seed(seed))[:n_pairs].tolist()]
    off = load_model("review-sft")
    train_dpo(off, tok, off_rows, replace(cfg.dpo, steps=n_steps, seed=seed), ref_model=sft)
    out["offline DPO"] = {"pairs": n_pairs, "steps": n_steps,
                          **sequence_kl(off.eval(), sft, tok, kl_prompts, 64, gold_fn=reviews.gold_rewards)}
    print(f"seed {seed} offline DPO {out['offline DPO']}", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="*", default=None, help="variant names (default: all)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--part", choices=("self", "online"), default="self",
                    help="self: the self-rewarding variants (default); online: section 4's outside judges")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = load_tokenizer()
    res = {}
    for s in args.seeds:
        res[str(s)] = run_seed(s, tok, args.only) if args.part == "self" else run_online_seed(s, tok)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"config": {"kl_budget": KL_BUDGET, "agreement_floor": AGREE_FLOOR,
                                      "refresh_steps": REFRESH_STEPS}, "seeds": res}, f, indent=1)


if __name__ == "__main__":
    main()
