"""Script runs behind docs/rl_toolbox.md's "Notebook 11" section (issue 18, items 1, 3, 4, 5): too slow for a notebook.

    python scripts/rl_toolbox_runs.py reinforce_pp SEED   # GRPO (beta 0.04) vs REINFORCE++, 80 steps x 16 x 8, lr 1e-4
    python scripts/rl_toolbox_runs.py passk SEED          # GRPO (beta 0) vs pass@k training (k 4), + pass@k on 64 test prompts
    python scripts/rl_toolbox_runs.py entropy SEED        # GRPO vs entropy bonus, Clip-Cov, KL-Cov, forking tokens (60 steps)
    python scripts/rl_toolbox_runs.py offpolicy SEED      # stale rollouts (2, 4) and sampler T 0.7, with/without TIS, CISPO
    python scripts/rl_toolbox_runs.py offpolicy_mis SEED  # masked IS in training; a sampler with bf16-rounded weights
    python scripts/rl_toolbox_runs.py rft_kl SEED         # RFT vs GRPO at equal KL: held-out trace and KL to SFT per checkpoint
    python scripts/rl_toolbox_runs.py raft_kl SEED        # the same for RAFT++ (preset raft_pp, lr 3e-4 and 1e-4) vs GRPO

From arith-sft with the trace reward, one torch thread; prints one JSON line per run and a FINAL line with the paired
bootstraps over the 500 test chains (and the 64 pass@k prompts). reinforce_pp / passk: about 80-100 s of CPU per job;
entropy, offpolicy, offpolicy_mis: 5, 7, 5 runs of 60 steps x 16 x 8 (about 35 s of CPU each, plus pass@k for entropy).
rft_kl: GRPO (80 steps, eval every 20) and RFT at lr 3e-4 and 1e-4 (4 rounds of 320 x 8, eval every round); each
checkpoint's sequence KL to arith-sft (one sample per prompt on test[:200], `evaluate.sequence_kl`) and trace accuracy.
"""
import json
import statistics
import sys
import time

import torch

from minirlhf.evaluate import eval_arithmetic, sequence_kl
from minirlhf.grpo import pass_at_k, preset, train_grpo
from minirlhf.rft import RFTConfig, train_rft
from minirlhf.lm import generate
from minirlhf.models import load_model, load_tokenizer
from minirlhf.stats import paired_bootstrap
from minirlhf.worlds.arithmetic import arithmetic_trace_reward
from minirlhf.zoo import load_split

torch.set_num_threads(1)

# each job: (name, preset, overrides) runs, all from arith-sft with the notebook-05 recipe below
JOBS = {
    "reinforce_pp": [("grpo", "grpo", dict(beta=0.04)), ("reinforce_pp", "reinforce_pp", dict())],
    "passk": [("grpo", "grpo", dict(beta=0.0)), ("pass_at_k", "pass_at_k", dict(beta=0.0))],
    # item 3: each entropy tool added to the same GRPO run (beta 0, the per-sequence token mean of the grpo preset)
    "entropy": [("grpo", "grpo", dict(beta=0.0)),
                ("entropy_bonus_0.1", "grpo", dict(beta=0.0, entropy_coef=0.1)),
                ("clip_cov", "grpo", dict(beta=0.0, cov_method="clip_cov", cov_ratio=0.02)),
                ("kl_cov_mu2", "grpo", dict(beta=0.0, cov_method="kl_cov", cov_ratio=0.02, mu=2)),
                ("forking_top0.2", "grpo", dict(beta=0.0, entropy_top_frac=0.2))],
    # item 4: the sampler is not the trainer
    "offpolicy": [("on_policy", "grpo", dict(beta=0.0)),
                  ("stale_2", "grpo", dict(beta=0.0, staleness=2)),
                  ("stale_4", "grpo", dict(beta=0.0, staleness=4)),
                  ("stale_4_tis", "grpo", dict(beta=0.0, staleness=4, is_correction="tis", is_cap=2.0)),
                  ("sampler_T0.7", "grpo", dict(beta=0.0, sampler_temperature=0.7)),
                  ("sampler_T0.7_tis", "grpo", dict(beta=0.0, sampler_temperature=0.7, is_correction="tis", is_cap=2.0)),
                  ("sampler_T0.7_cispo_tis", "cispo", dict(beta=0.0, sampler_temperature=0.7, is_correction="tis",
                                                           is_cap=2.0))],
    # item 4, continued: masked IS (band [0.5, 2]) in training, and a sampler whose weights are rounded to bf16
    "offpolicy_mis": [("on_policy", "grpo", dict(beta=0.0)),
                      ("stale_4_mis", "grpo", dict(beta=0.0, staleness=4, is_correction="mis")),
                      ("sampler_T0.7_mis", "grpo", dict(beta=0.0, sampler_temperature=0.7, is_correction="mis")),
                      ("sampler_bf16", "grpo", dict(beta=0.0, sampler_precision="bfloat16")),
                      ("sampler_bf16_tis", "grpo", dict(beta=0.0, sampler_precision="bfloat16", is_correction="tis",
                                                        is_cap=2.0))],
    # RFT vs GRPO at equal KL (run_rft_kl below): GRPO as in the toolbox table, RFT at two learning rates
    "rft_kl": [],
    "raft_kl": [],  # the same comparison with RAFT++ (item 6's policy gradient) instead of RFT
}
STEPS = {"reinforce_pp": 80, "passk": 80, "entropy": 60, "offpolicy": 60, "offpolicy_mis": 60, "rft_kl": 80, "raft_kl": 80}
WITH_PASS_AT_K = ("passk", "entropy")

if len(sys.argv) != 3 or sys.argv[1] not in JOBS or not sys.argv[2].isdigit():
    sys.exit(f"usage: python scripts/rl_toolbox_runs.py {'|'.join(JOBS)} SEED")
job, seed = sys.argv[1], int(sys.argv[2])
tokenizer = load_tokenizer()
train_prompts = [r["prompt"] for r in load_split("arithmetic", "train")]
test = load_split("arithmetic", "test")


def per_prompt(model):
    """Greedy (answer, trace) correctness per held-out chain, as two lists of 0/1 (for paired bootstraps)."""
    results = [r for _, _, r in eval_arithmetic(model, tokenizer, test, return_samples=True)["samples"]]
    return [float(r.answer_correct) for r in results], [float(r.trace_correct) for r in results]


def pass_at_ks(model, n=32, ks=(1, 4, 16, 32)):
    """Unbiased pass@k per prompt from n samples at T = 1 on the first 64 test prompts: {k: [64 values]}."""
    prompts = [r["prompt"] for r in test[:64]]
    repeated = [p for p in prompts for _ in range(n)]
    completions, _ = generate(model, tokenizer, repeated, 64, 1.0, generator=torch.Generator().manual_seed(123 + seed))
    correct = arithmetic_trace_reward(repeated, completions)
    counts = [int(sum(correct[i * n:(i + 1) * n])) for i in range(len(prompts))]
    return {k: [pass_at_k(n, c, k) for c in counts] for k in ks}


def summarise_log(rows):
    """Entropy at the start and end, and the off-policy ratio statistics, from train_grpo's per-step rows."""
    steps = [r for r in rows if "entropy" in r]
    out = {"entropy_start": statistics.mean(r["entropy"] for r in steps[:3]),
           "entropy_end": statistics.mean(r["entropy"] for r in steps[-5:]),
           "train_reward_end": statistics.mean(r["reward/mean"] for r in steps[-5:])}
    offpolicy = [r for r in steps if "offpolicy/ratio_max_dev" in r]
    if offpolicy:
        # the first step whose sampler differs (stale: step k + 1; another temperature: step 1)
        first = next((r for r in offpolicy if r["offpolicy/ratio_max_dev"] > 1e-4), offpolicy[0])
        out["first_offpolicy_step"] = first["step"]
        out["ratio_max_dev_first"] = first["offpolicy/ratio_max_dev"]
        out["ratio_max_dev_mean"] = statistics.mean(r["offpolicy/ratio_max_dev"] for r in offpolicy)
        out["ratio_mean_mean"] = statistics.mean(r["offpolicy/ratio_mean"] for r in offpolicy)
        if "offpolicy/frac_truncated" in offpolicy[0]:
            out["frac_truncated_mean"] = statistics.mean(r["offpolicy/frac_truncated"] for r in offpolicy)
        if "offpolicy/frac_masked" in offpolicy[0]:
            out["frac_masked_mean"] = statistics.mean(r["offpolicy/frac_masked"] for r in offpolicy)
    return out


def run_rft_kl(sft_trace, raft: bool = False):
    """GRPO (grpo preset, beta 0.04, lr 1e-4, 80 x 16 x 8) and RFT (4 x 320 x 8, lr 3e-4 and 1e-4): at every
    checkpoint the sequence KL to arith-sft and the per-prompt trace correctness; then, against GRPO's final
    checkpoint, the paired difference of the RFT checkpoint with the nearest KL (and of RFT's last one).
    raft: RAFT++ (preset raft_pp, 6 steps x 320 x 8, evaluated every step) in place of RFT."""
    kl_prompts = [r["prompt"] for r in test[:200]]
    curves = {}

    def recorder(name):
        def eval_fn(model):
            _, trace = per_prompt(model)
            point = {"kl": sequence_kl(model, sft, tokenizer, kl_prompts)["kl"], "trace": statistics.mean(trace)}
            curves.setdefault(name, []).append({**point, "per_prompt": trace})
            return point
        return eval_fn

    cpu = {}
    c = time.process_time()
    train_grpo(load_model("arith-sft"), tokenizer, train_prompts, [arithmetic_trace_reward],
               preset("grpo", lr=1e-4, warmup_steps=10, steps=80, eval_every=20, seed=seed), eval_fn=recorder("grpo"))
    cpu["grpo"] = time.process_time() - c
    runs = (("raft_lr3e-4", 3e-4), ("raft_lr1e-4", 1e-4)) if raft else (("rft_lr3e-4", 3e-4), ("rft_lr1e-4", 1e-4))
    for name, lr in runs:
        c = time.process_time()
        if raft:
            train_grpo(load_model("arith-sft"), tokenizer, train_prompts, [arithmetic_trace_reward],
                       preset("raft_pp", lr=lr, seed=seed), eval_fn=recorder(name))
        else:
            train_rft(load_model("arith-sft"), tokenizer, train_prompts, arithmetic_trace_reward,
                      RFTConfig(iterations=4, prompts_per_iteration=320, samples_per_prompt=8, lr=lr, seed=seed),
                      eval_fn=recorder(name))
        cpu[name] = time.process_time() - c
    grpo_end = curves["grpo"][-1]
    out = {name: [{"kl": p["kl"], "trace": p["trace"]} for p in pts] for name, pts in curves.items()}
    out["cpu"] = cpu
    rft_points = [(name, i, p) for name in curves if name != "grpo" for i, p in enumerate(curves[name]) if i > 0]
    name, i, nearest = min(rft_points, key=lambda t: abs(t[2]["kl"] - grpo_end["kl"]))
    out["nearest_rft"] = {"run": name, "round": i, "kl": nearest["kl"], "trace": nearest["trace"],
                          "minus_grpo": str(paired_bootstrap(nearest["per_prompt"], grpo_end["per_prompt"]))}
    out["grpo_end"] = {"kl": grpo_end["kl"], "trace": grpo_end["trace"],
                       "minus_sft": str(paired_bootstrap(grpo_end["per_prompt"], sft_trace))}
    for name, _ in runs:
        out[f"{name}_end_minus_grpo"] = str(paired_bootstrap(curves[name][-1]["per_prompt"], grpo_end["per_prompt"]))
    return out


sft = load_model("arith-sft")
sft_answer, sft_trace = per_prompt(sft)
out = {"job": job, "seed": seed, "steps": STEPS[job], "sft_trace": statistics.mean(sft_trace),
       "sft_answer": statistics.mean(sft_answer)}
if job in WITH_PASS_AT_K:
    passk = {"sft": pass_at_ks(sft)}
    out["sft"] = {f"pass@{k}": statistics.mean(v) for k, v in passk["sft"].items()}
if job in ("rft_kl", "raft_kl"):
    out.update(run_rft_kl(sft_trace, raft=job == "raft_kl"))
    print("FINAL", json.dumps(out), flush=True)
    sys.exit(0)
traces = {}
for name, variant, overrides in JOBS[job]:
    policy = load_model("arith-sft")
    cpu = time.process_time()
    cfg = preset(variant, **{"lr": 1e-4, "warmup_steps": 10, "mu": 1, "steps": STEPS[job], "eval_every": 0,
                             "seed": seed, **overrides})
    log = train_grpo(policy, tokenizer, train_prompts, [arithmetic_trace_reward], cfg)
    answer, trace = per_prompt(policy)
    traces[name] = trace
    result = {"trace": statistics.mean(trace), "answer": statistics.mean(answer),
              "gain_vs_sft": str(paired_bootstrap(trace, sft_trace)), **summarise_log(log.rows)}
    if job in WITH_PASS_AT_K:
        passk[name] = pass_at_ks(policy)
        result.update({f"pass@{k}": statistics.mean(v) for k, v in passk[name].items()})
    result["cpu"] = time.process_time() - cpu
    out[name] = result
    print(json.dumps({name: result}), flush=True)

baseline = JOBS[job][0][0]
for name in traces:
    if name != baseline:
        out[f"trace_{name}_minus_{baseline}"] = str(paired_bootstrap(traces[name], traces[baseline]))
        if job in WITH_PASS_AT_K:
            for k in (1, 16):
                out[f"pass{k}_{name}_minus_{baseline}"] = str(paired_bootstrap(passk[name][k], passk[baseline][k]))
print("FINAL", json.dumps(out), flush=True)
