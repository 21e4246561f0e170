"""Build the shipped judges (issue 17): a generative verifier for arithmetic, a generative judge for reviews.

    python -m minirlhf.zoo --only judges          # or: python -m minirlhf.judges.build

* `arith-genrm`: `arith-sft-full` fine-tuned (SFT) to answer "Is it right? " with 'Y'/'N' after
  samples of arith-sft (T = 1, train prompts), the verdict being the checker's whole-trace label
  (`verdict.verdict_rows`). The same backbone and the same kind of samples as the shipped ORM and
  gold PRM (`prm_build.py`), at a small fraction of their 3,500 updates.
* `arith-genrm-cot` (`build_genrm_cot`, its own zoo step `genrm-cot`, not part of `build_judges`): the same samples,
  steps and backbone, each row's target the written check first, then the verdict ("step 2 wrong\\nN" /
  "all steps right\\nY", `verdict.rationale`): generative chain-of-thought verification (docs/judges.md).
* `review-judge`: `review-sft` fine-tuned on two questions at once: pairwise "Better? " -> 'A'/'B'
  on prefs_train pairs labelled by gold, in a random order (`pairwise.pairwise_rows`), and pointwise
  "Good? " -> 'Y'/'N' on SFT reviews, 'Y' iff gold > 0 (`pairwise.pointwise_rows`).
* `review-self`: the same judge rows mixed with plain review SFT rows (Yuan et al. 2024's IFT + EFT
  data), so that one model both writes reviews and judges them: the starting policy of
  self-rewarding DPO (notebook 10, section 5). `review-judge` alone cannot serve: it forgets how to
  write (gold -2.0, every sample off the grammar, KL 35 to review-sft on 128 test prompts).

Both are plain causal LMs (0.2M parameters, ~0.8 MB); times are in each model's build_info.json.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass

import torch

from ..models import MODELS_DIR, count_parameters, load_model, load_tokenizer
from ..prm import auc, within_prompt_auc
from ..sft import SFTConfig, train_sft
from ..utils import set_seed
from ..worlds import reviews
from ..worlds.arithmetic import check_chain
from . import pairwise, verdict


@dataclass
class JudgeBuildConfig:
    """What `build_judges` trains."""

    genrm_samples: int = 6000
    """arith-sft samples (T = 1) on train prompts, one per prompt, each a verdict row."""
    genrm_steps: int = 800
    """SFT steps of the generative verifier (held-out within-prompt AUC 0.61 / 0.54 / 0.59 / 0.57 at 200-800:
    at this budget it learns which prompts are hard, not which chain is wrong, like the ORM)."""
    genrm_lr: float = 1e-3
    """Its peak learning rate (cosine to 10%)."""
    dev_prompts: int = 40
    """Dev prompts for the held-out within-prompt AUC ..."""
    dev_samples: int = 16
    """... each sampled this many times."""
    judge_pairs: int = 4000
    """prefs_train pairs for the pairwise questions of review-judge."""
    judge_points: int = 1000
    """SFT reviews for its pointwise question."""
    judge_steps: int = 300
    """SFT steps of review-judge."""
    judge_lr: float = 1e-3
    """Its peak learning rate (2e-3 was worse: agreement 0.50 after 300 of 900 steps)."""
    self_sft_rows: int = 2500
    """review-self: plain review SFT rows (from the end of the sft split) mixed into review-judge's rows."""
    self_steps: int = 400
    """review-self: SFT steps (more rows than review-judge, so more steps)."""
    batch_size: int = 32
    """Rows per SFT step (both judges)."""
    seed: int = 0
    """Seed of sampling and data order."""


def _save(model, tok, name: str, info: dict) -> None:
    out = MODELS_DIR / name
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "build_info.json").write_text(json.dumps({"name": name, **info}, indent=2))


def train_genrm(cfg: JudgeBuildConfig, tok, backbone: str | None = None,
                with_rationale: bool = False) -> tuple[object, dict]:
    """Sample, label by the checker, SFT the verifier from `backbone` (default arith-sft-full) -> (model, info).
    with_rationale: the rows are GenRM-CoT's ("step k wrong\nN" / "all steps right\nY"), and the held-out AUC
    reads the check's first token (`verdict.first_token_scores`) instead of the verdict."""
    from ..lm import generate
    from ..zoo import load_split

    g = set_seed(cfg.seed)
    t0, c0 = time.time(), time.process_time()
    sft = load_model("arith-sft").eval()
    train = load_split("arithmetic", "train")
    prompts = [train[i]["prompt"] for i in torch.randint(len(train), (cfg.genrm_samples,), generator=g).tolist()]
    comps, _ = generate(sft, tok, prompts, 64, temperature=1.0, generator=g, batch_size=512)
    rows = verdict.verdict_rows(prompts, comps, with_rationale=with_rationale)
    dev_p = [r["prompt"] for r in load_split("arithmetic", "dev")[:cfg.dev_prompts] for _ in range(cfg.dev_samples)]
    dev_c, _ = generate(sft, tok, dev_p, 64, temperature=1.0, generator=g, batch_size=512)
    dev_trace = torch.tensor([check_chain(p, c).trace_correct for p, c in zip(dev_p, dev_c)])

    def held_out(m):
        s = (verdict.first_token_scores if with_rationale else verdict.verdict_scores)(m, tok, dev_p, dev_c)
        return {"val": within_prompt_auc(s.view(-1, cfg.dev_samples), dev_trace.view(-1, cfg.dev_samples)),
                "pooled_auc": auc(s, dev_trace)}

    model = load_model(backbone or "arith-sft-full")
    start = held_out(model)
    sft_cfg = SFTConfig(lr=cfg.genrm_lr, steps=cfg.genrm_steps, batch_size=cfg.batch_size, warmup_steps=20,
                        seed=cfg.seed, log_every=100)
    log = train_sft(model, tok, rows, sft_cfg,
                    eval_fn=held_out, eval_every=200, progress=True)
    vals = [r for r in log.rows if "val" in r]
    info = {"backbone": "arith-sft-full", "generator": "arith-sft", "rows": len(rows),
            "label_rate_Y": sum(r["completion"].endswith(verdict.YES) for r in rows) / len(rows),
            "held_out_within_prompt_auc": [(r["step"] + 1, round(r["val"], 4)) for r in vals],
            "held_out_pooled_auc": [(r["step"] + 1, round(r["pooled_auc"], 4)) for r in vals],
            "start_within_prompt_auc": round(start["val"], 4),
            "build_minutes": round((time.time() - t0) / 60, 2),
            "build_cpu_minutes": round((time.process_time() - c0) / 60, 2), "parameters": count_parameters(model)}
    return model, {**info, "config": asdict(cfg)}


def build_genrm(cfg: JudgeBuildConfig, tok) -> dict:
    model, info = train_genrm(cfg, tok)
    _save(model, tok, "arith-genrm", info)
    return info


def build_genrm_cot(cfg: JudgeBuildConfig | None = None, tok=None) -> dict:
    """`arith-genrm-cot`: arith-genrm's samples, steps and backbone, the rows with the written check first
    (GenRM-CoT). Callable alone: `python -m minirlhf.zoo --only genrm-cot`."""
    cfg, tok = cfg or JudgeBuildConfig(), tok or load_tokenizer()
    model, info = train_genrm(cfg, tok, with_rationale=True)
    _save(model, tok, "arith-genrm-cot", {**info, "rows_format": "problem + solution + question -> 'step k wrong\\nN'"
                                          " / 'all steps right\\nY' (verdict.rationale)"})
    return info


def train_review_judge(cfg: JudgeBuildConfig, tok, backbone: str | None = None,
                       write_rows: int = 0, steps: int | None = None) -> tuple[object, dict]:
    """Gold-labelled pairwise + pointwise rows, SFT from `backbone` (default review-sft) -> (model, info).
    write_rows > 0 mixes in that many plain review SFT rows (prompt -> review; review-self)."""
    from ..zoo import load_split

    set_seed(cfg.seed)
    t0, c0 = time.time(), time.process_time()
    rows = pairwise.pairwise_rows(load_split("reviews", "prefs_train")[:cfg.judge_pairs], reviews.gold_reward, cfg.seed)
    rows += pairwise.pointwise_rows(load_split("reviews", "sft")[:cfg.judge_points], reviews.gold_reward)
    if write_rows:
        rows += [{"prompt": r["prompt"], "completion": r["completion"]} for r in load_split("reviews", "sft")[-write_rows:]]
    random.Random(cfg.seed).shuffle(rows)
    test = load_split("reviews", "prefs_test")[:400]
    ps, a, b = [r["prompt"] for r in test], [r["chosen"] for r in test], [r["rejected"] for r in test]
    ga = torch.tensor([reviews.gold_reward(p + x) for p, x in zip(ps, a)])
    gb = torch.tensor([reviews.gold_reward(p + x) for p, x in zip(ps, b)])

    def held_out(m):
        both = pairwise.judge_both_orders(lambda p, x, y: pairwise.pairwise_probs(m, tok, p, x, y), ps, a, b)
        return {"val": pairwise.gold_agreement(both["p"], ga, gb),
                "one_order": pairwise.gold_agreement(both["p_ab"], ga, gb),
                **pairwise.position_bias(both["p_ab"], both["p_ba"])}

    model = load_model(backbone or "review-sft")
    sft_cfg = SFTConfig(lr=cfg.judge_lr, steps=steps or cfg.judge_steps, batch_size=cfg.batch_size, max_length=384,
                        warmup_steps=20, seed=cfg.seed, log_every=100)  # a few pairs of long reviews pass 256 tokens
    log = train_sft(model, tok, rows, sft_cfg,
                    eval_fn=held_out, eval_every=100, progress=True)
    vals = [r for r in log.rows if "val" in r]
    info = {"backbone": "review-sft", "rows": len(rows), "write_rows": write_rows,
            "held_out_gold_agreement_both_orders": [(r["step"] + 1, round(r["val"], 4)) for r in vals],
            "final": {k: round(vals[-1][k], 4) for k in ("val", "one_order", "position_bias", "order_flips", "first_slot")},
            "build_minutes": round((time.time() - t0) / 60, 2),
            "build_cpu_minutes": round((time.process_time() - c0) / 60, 2), "parameters": count_parameters(model)}
    return model, {**info, "config": asdict(cfg)}


def build_review_judge(cfg: JudgeBuildConfig, tok) -> dict:
    model, info = train_review_judge(cfg, tok)
    _save(model, tok, "review-judge", info)
    return info


def build_review_self(cfg: JudgeBuildConfig, tok) -> dict:
    """review-self: review-judge's rows + `cfg.self_sft_rows` review SFT rows, `cfg.self_steps` steps."""
    from ..evaluate import sequence_kl
    from ..zoo import load_split

    model, info = train_review_judge(cfg, tok, write_rows=cfg.self_sft_rows, steps=cfg.self_steps)
    ev = [r["prompt"] for r in load_split("reviews", "prompts_test")][:128]
    w = sequence_kl(model.eval(), load_model("review-sft").eval(), tok, ev, 64, gold_fn=reviews.gold_rewards)
    info["writes"] = {"gold_reward": w["gold_reward"], "kl_to_review_sft": w["kl"], "eval_prompts": len(ev)}
    _save(model, tok, "review-self", info)
    return info


def build_judges(cfg: JudgeBuildConfig | None = None,
                 only: tuple[str, ...] = ("arith-genrm", "review-judge", "review-self")) -> dict:
    """Write data/models/arith-genrm, review-judge and review-self (see the module docstring)."""
    cfg = cfg or JudgeBuildConfig()
    tok = load_tokenizer()
    out = {}
    if "arith-genrm" in only:
        out["arith-genrm"] = build_genrm(cfg, tok)
    if "review-judge" in only:
        out["review-judge"] = build_review_judge(cfg, tok)
    if "review-self" in only:
        out["review-self"] = build_review_self(cfg, tok)
    return out


if __name__ == "__main__":
    import sys

    torch.set_num_threads(1)
    print(json.dumps(build_judges(only=tuple(sys.argv[1:]) or ("arith-genrm", "review-judge", "review-self")), indent=2))
