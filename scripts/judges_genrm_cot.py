"""GenRM-CoT vs GenRM vs ORM vs gold PRM at best-of-16 on whole arithmetic traces (docs/judges.md).

    OMP_NUM_THREADS=1 python scripts/judges_genrm_cot.py --seeds 0 1 2 --out docs/judges_genrm_cot.json

The pools are notebook 10's section 1 exactly (40 test prompts x 16 arith-sft chains at T = 1, drawn with
`torch.Generator().manual_seed(seed)`), so the ORM / PRM / GenRM rows match docs/claims/10.md. The sampled
checks use a separate generator (seed + 1000). m = 1 and m = 4 are the first 1 and 4 of the 8 sampled checks.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from minirlhf import prm
from minirlhf.judges import verdict
from minirlhf.lm import generate
from minirlhf.models import ScalarHeadModel, load_model, load_tokenizer
from minirlhf.stats import paired_bootstrap
from minirlhf.worlds.arithmetic import check_chain
from minirlhf.zoo import load_split

M, NS, N_P, MS = 16, [1, 2, 4, 8, 16], 40, (1, 4, 8)


def run_seed(seed: int, models: dict, tok) -> dict:
    g = torch.Generator().manual_seed(seed)
    rows = load_split("arithmetic", "test")[:N_P]
    prompts = [r["prompt"] for r in rows for _ in range(M)]
    comps, _ = generate(models["arith-sft"], tok, prompts, 80, temperature=1.0, generator=g, batch_size=512)
    trace = torch.tensor([check_chain(p, c).trace_correct for p, c in zip(prompts, comps)]).view(N_P, M)
    scores, cpu = {}, {}

    def timed(name, fn):
        c0 = time.process_time()
        scores[name] = fn().view(N_P, M)
        cpu[name] = round(time.process_time() - c0, 1)

    timed("ORM", lambda: prm.orm_scores(models["orm"], tok, prompts, comps))
    timed("gold PRM (min)", lambda: prm.aggregate_steps(*prm.prm_step_scores(models["prm"], tok, prompts, comps), "min"))
    timed("GenRM p(Y)", lambda: verdict.verdict_scores(models["genrm"], tok, prompts, comps))
    cot = models["genrm-cot"]
    greedy = {}

    def greedy_fn():
        s, greedy["checks"] = verdict.cot_verdict_samples(cot, tok, prompts, comps, 1, temperature=0.0)
        return s[:, 0]

    timed("CoT, greedy check", greedy_fn)
    gc = torch.Generator().manual_seed(seed + 1000)
    c0 = time.process_time()
    samples, checks = verdict.cot_verdict_samples(cot, tok, prompts, comps, max(MS), generator=gc)  # (N, 8)
    cpu_all = time.process_time() - c0
    for m in MS:
        scores[f"CoT, mean of {m} sampled"] = samples[:, :m].mean(-1).view(N_P, M)
        cpu[f"CoT, mean of {m} sampled"] = round(cpu_all * m / max(MS), 1)  # pro rata: generation dominates
    timed("CoT, first token (m -> inf)", lambda: verdict.first_token_scores(cot, tok, prompts, comps))
    per = {k: prm.best_of_n_per_prompt(s, trace, NS, seed=seed) for k, s in scores.items()}
    table = {k: {"within_auc": round(prm.within_prompt_auc(s, trace), 4),
                 "pooled_auc": round(prm.auc(s.flatten(), trace.flatten()), 4),
                 "trace_at_16": round(per[k][:, -1].mean().item(), 4), "cpu_s": cpu[k]} for k, s in scores.items()}
    first = [c for i, c in enumerate(checks) if i % max(MS) == 0]  # the first sampled check of each chain
    out = {"seed": seed, "trace_at_1": round(per["ORM"][:, 0].mean().item(), 4),
           "oracle_at_16": round(prm.best_of_n_curve(trace.float(), trace, NS, seed=seed)[-1], 4),
           "table": table,
           "check_accuracy": {"greedy": {k: round(v, 4) for k, v in
                                         verdict.check_accuracy(greedy["checks"], prompts, comps).items()},
                              "sampled": {k: round(v, 4) for k, v in verdict.check_accuracy(first, prompts, comps).items()}},
           "trace_rate": round(trace.float().mean().item(), 4)}
    ref = per["GenRM p(Y)"][:, -1]
    out["vs_genrm_at_16"] = {k: paired_bootstrap(per[k][:, -1], ref).as_dict() for k in scores if k.startswith("CoT")}
    out["cot4_vs_cot1_at_16"] = paired_bootstrap(per["CoT, mean of 4 sampled"][:, -1],
                                                 per["CoT, mean of 1 sampled"][:, -1]).as_dict()
    out["prm_vs_cot8_at_16"] = paired_bootstrap(per["gold PRM (min)"][:, -1], per["CoT, mean of 8 sampled"][:, -1]).as_dict()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="docs/judges_genrm_cot.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = load_tokenizer()
    models = {"arith-sft": load_model("arith-sft").eval(), "orm": ScalarHeadModel.from_pretrained("arith-orm").eval(),
              "prm": ScalarHeadModel.from_pretrained("arith-prm-gold").eval(), "genrm": load_model("arith-genrm").eval(),
              "genrm-cot": load_model("arith-genrm-cot").eval()}
    res = []
    for seed in args.seeds:
        t0, c0 = time.time(), time.process_time()
        r = run_seed(seed, models, tok)
        r["wall_s"], r["cpu_s"] = round(time.time() - t0, 1), round(time.process_time() - c0, 1)
        res.append(r)
        print(json.dumps(r), flush=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
