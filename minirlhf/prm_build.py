"""Build the shipped verifiers: arith-sft's samples at T = 1 on train prompts, labelled by the
checker (gold steps, outcomes) and by Monte-Carlo rollouts, and the five verifiers trained on them.

    python -m minirlhf.prm_build        # or: python -m minirlhf.zoo --only arith-verifiers

Writes data/models/arith-prm-{gold,mc-hard,mc-soft,implicit} and arith-orm. The method itself
(data format, losses, labels, scoring, training) is in `prm.py`; times and numbers in docs/prm.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import torch

from .models import MODELS_DIR, ScalarHeadModel, count_parameters, load_model, load_tokenizer
from .prm import (PolicyRollouts, VerifierConfig, aggregate_steps, answer_correct, implicit_prm_step_scores,
                  monte_carlo_labels, orm_scores, prm_step_scores, to_prm_rows, train_verifier, within_prompt_auc)
from .utils import set_seed
from .worlds.arithmetic import check_chain


@dataclass
class BuildConfig:
    """What `build_verifiers` trains (see docs/prm.md for times)."""

    generator: str = "arith-sft"
    """The policy whose samples are verified (and whose samples are labelled)."""
    backbone: str = "arith-sft-full"
    """The verifiers' starting weights: an LM that knows arithmetic (99.8% of test chains). Started
    from the weak generator itself, no verifier got past chance at ranking one prompt's samples."""
    n_train: int = 32000
    """Train prompts sampled from the generator (one completion each, temperature 1): gold and outcome labels."""
    n_dev_prompts: int = 40
    """Dev prompts for model selection (early stopping) ..."""
    dev_samples: int = 16
    """... each sampled this many times: selection is on the within-prompt AUC (`within_prompt_auc`)."""
    n_mc: int = 300
    """Of the train samples, how many also get Monte-Carlo labels (the expensive part)."""
    mc_rollouts: int = 8
    """Rollouts per step prefix (Math-Shepherd uses 8)."""
    train: VerifierConfig = field(default_factory=lambda: VerifierConfig(steps=3500, eval_every=250))
    """Training of the gold PRM and the ORM (3500 x 64 = 7 passes over 32000). Checking a step is
    learned late and suddenly (within-prompt AUC ~0.55 up to ~2000 steps, then > 0.9)."""
    implicit_steps: int = 1000
    """Optimizer steps of the implicit PRM (a causal LM plus a reference: ~2.5x the cost per step)."""
    mc_steps: int = 10
    """Optimizer steps of the two Monte-Carlo PRMs (10 x 64 = 2 passes over 300)."""
    seed: int = 0
    """Seed of prompts and sampling."""
    only: tuple[str, ...] | None = None
    """Build only these verifiers (names as in data/models); None: all five."""


def build_verifiers(cfg: BuildConfig | None = None) -> dict:
    """Write data/models/arith-prm-{gold,mc-hard,mc-soft,implicit} and arith-orm.

    All start from `cfg.backbone`; each keeps the weights with the best held-out score on
    dev samples: step AUC vs gold labels (gold PRM), answer AUC (ORM, implicit PRM: outcome labels
    only), answer AUC of the min step score (MC PRMs: no gold step labels either)."""
    from .lm import generate
    from .zoo import load_split

    cfg = cfg or BuildConfig()
    t0, c0 = time.time(), time.process_time()
    g = set_seed(cfg.seed)
    tok, sft = load_tokenizer(), load_model(cfg.generator).eval()
    backbone = load_model(cfg.backbone).eval()  # also the implicit PRM's reference

    # 1. samples: train prompts (training), and dev prompts with several samples each (selection)
    def draw(prompts):
        return generate(sft, tok, prompts, 64, temperature=1.0, generator=g, batch_size=512)[0]

    train_rows = load_split("arithmetic", "train")
    prompts = [train_rows[i]["prompt"] for i in torch.randint(len(train_rows), (cfg.n_train,), generator=g).tolist()]
    completions = draw(prompts)
    dev_p = [r["prompt"] for r in load_split("arithmetic", "dev")[:cfg.n_dev_prompts] for _ in range(cfg.dev_samples)]
    dev_c = draw(dev_p)
    outcomes = [answer_correct(p, c) for p, c in zip(prompts, completions)]
    dev_ans = torch.tensor([answer_correct(p, c) for p, c in zip(dev_p, dev_c)]).view(-1, cfg.dev_samples)
    dev_trace = torch.tensor([check_chain(p, c).trace_correct for p, c in zip(dev_p, dev_c)]).view(dev_ans.shape)
    # 2. labels: gold steps and outcomes (free), Monte-Carlo on a subset (only if an MC PRM is built)
    gold = to_prm_rows(prompts, completions)
    outcome_rows = [{"prompt": p, "completion": c, "label": y} for p, c, y in zip(prompts, completions, outcomes)]
    rollouts = PolicyRollouts(sft, tok, temperature=1.0, generator=g)
    hard = soft = None
    if any(name.startswith("arith-prm-mc") for name in (cfg.only or ["arith-prm-mc"])):
        hard, soft = monte_carlo_labels(prompts[:cfg.n_mc], [r["completions"] for r in gold[:cfg.n_mc]], rollouts,
                                        answer_correct, cfg.mc_rollouts)
    mc_cfg = VerifierConfig(**{**asdict(cfg.train), "steps": cfg.mc_steps, "eval_every": 5})
    imp_cfg = VerifierConfig(**{**asdict(cfg.train), "steps": cfg.implicit_steps, "eval_every": 100})

    # Selection score: how well a verifier ranks the samples of one prompt (what best-of-N needs),
    # against the labels its method has: trace correctness for the gold PRM, answers for the others.
    def prm_min(m):
        return aggregate_steps(*prm_step_scores(m, tok, dev_p, dev_c), "min").view(dev_ans.shape)

    jobs = {  # name: (kind, rows, config, held-out score)
        "arith-prm-gold": ("prm", gold, cfg.train, lambda m: within_prompt_auc(prm_min(m), dev_trace)),
        "arith-orm": ("orm", outcome_rows, cfg.train, lambda m: within_prompt_auc(
            orm_scores(m, tok, dev_p, dev_c).view(dev_ans.shape), dev_ans)),
        "arith-prm-implicit": ("implicit", outcome_rows, imp_cfg, lambda m: within_prompt_auc(
            implicit_prm_step_scores(m, backbone, tok, dev_p, dev_c, cfg.train.beta)[0].sum(-1).view(dev_ans.shape),
            dev_ans)),
    }
    if hard is not None:
        for name, labels in (("arith-prm-mc-hard", hard), ("arith-prm-mc-soft", soft)):
            jobs[name] = ("prm", to_prm_rows(prompts[:cfg.n_mc], completions[:cfg.n_mc], labels), mc_cfg,
                          lambda m: within_prompt_auc(prm_min(m), dev_ans))
    jobs = {k: v for k, v in jobs.items() if cfg.only is None or k in cfg.only}
    info = {"generator": cfg.generator, "backbone": cfg.backbone, "samples": cfg.n_train, "mc_samples": cfg.n_mc,
            "dev_samples": cfg.n_dev_prompts * cfg.dev_samples,
            "sample_answer_accuracy": sum(outcomes) / len(outcomes), "mc_tokens_sampled": rollouts.tokens_sampled,
            "mc_label_seconds": round(time.time() - t0, 1), "verifier": asdict(cfg.train), "mc_steps": cfg.mc_steps,
            "implicit_steps": cfg.implicit_steps,
            "models": {}}
    # 3. train each verifier from the backbone, keep the best held-out weights
    for name, (kind, rows, vcfg, score) in jobs.items():
        t1 = time.time()
        model = load_model(cfg.backbone) if kind == "implicit" else ScalarHeadModel(load_model(cfg.backbone))
        log = train_verifier(model, tok, rows, kind, vcfg, ref=backbone if kind == "implicit" else None,
                             eval_fn=score)
        out = MODELS_DIR / name
        model.save_pretrained(out)
        tok.save_pretrained(out)
        vals = [r for r in log.rows if "val" in r]
        best = max(vals, key=lambda r: r["val"])
        info["models"][name] = {"train_rows": len(rows), "held_out": [round(r["val"], 4) for r in vals],
                                "best_step": best["step"], "best_held_out": round(best["val"], 4),
                                "train_seconds": round(time.time() - t1, 1)}
    info["build_minutes"] = round((time.time() - t0) / 60, 2)
    info["build_cpu_minutes"] = round((time.process_time() - c0) / 60, 2)
    info["parameters"] = count_parameters(sft)
    for name in info["models"]:
        (MODELS_DIR / name / "build_info.json").write_text(json.dumps({"name": name, **info}, indent=2))
    return info


if __name__ == "__main__":
    print(json.dumps(build_verifiers(), indent=2))
