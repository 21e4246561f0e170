"""Build the reward-model ensemble and the WARM model shipped for the defences (issue 16).

    python -m minirlhf.zoo --only rm-ensemble

Members: the shipped `review-rm` (data-order seed 0) and `review-rm-s1`, `review-rm-s2`, trained with
review-rm's recipe (`reward_model.SHIPPED`) from the same starting point (review-sft backbone, the
same head initialisation) on the same pairs in another order. One initialisation is what WARM
needs: `review-rm-warm` is the uniform weight average of the three (`defences.warm_average`).
The ensemble is then only as diverse as data order makes it; Coste et al. (2024) also vary the
initialisation, which would make a better ensemble and a worse WARM (a design exercise).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace

import torch

from ..models import MODELS_DIR, ScalarHeadModel, count_parameters, load_tokenizer
from ..reward_model import SHIPPED, evaluate_reward_model, train_reward_model
from .defences import warm_average

MEMBERS = ("review-rm", "review-rm-s1", "review-rm-s2")
WARM = "review-rm-warm"
_EVAL_KEYS = ("accuracy", "gold_accuracy", "noise_ceiling", "ece")


def _save(rm: ScalarHeadModel, tok, name: str, info: dict) -> None:
    out = MODELS_DIR / name
    rm.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "build_info.json").write_text(json.dumps(info, indent=2))


def build_ensemble(seeds: tuple[int, ...] = (1, 2)) -> dict:
    """Train review-rm-s<seed> for each seed (review-rm must exist), then average all into WARM."""
    from ..zoo import load_split

    tok = load_tokenizer()
    train, test = load_split("reviews", "prefs_train"), load_split("reviews", "prefs_test")
    infos = {}
    for s in seeds:
        cfg = replace(SHIPPED, seed=s)          # only the data order differs from review-rm
        torch.manual_seed(SHIPPED.seed)         # ... and the head starts where review-rm's did
        rm = ScalarHeadModel.from_causal_lm("review-sft")
        t0 = time.time()
        log = train_reward_model(rm, tok, train, cfg, progress=True)
        ev = evaluate_reward_model(rm, tok, test)
        info = {"config": asdict(cfg), "base": "review-sft", "head_init_seed": SHIPPED.seed,
                "parameters": count_parameters(rm), "train_minutes": round((time.time() - t0) / 60, 2),
                "final_loss": log.series("loss")[-1],
                "metrics": {"prefs_test": {k: round(ev[k], 4) for k in _EVAL_KEYS}}}
        _save(rm, tok, f"review-rm-s{s}", info)
        infos[f"review-rm-s{s}"] = info["metrics"]["prefs_test"]
    members = ("review-rm", *(f"review-rm-s{s}" for s in seeds))
    sds = [ScalarHeadModel.from_pretrained(MODELS_DIR / m).state_dict() for m in members]
    warm = ScalarHeadModel.from_pretrained(MODELS_DIR / members[0])
    warm.load_state_dict(warm_average(sds))
    ev = evaluate_reward_model(warm, tok, test)
    _save(warm, tok, WARM, {"warm_of": list(members), "weights": "uniform",
                            "metrics": {"prefs_test": {k: round(ev[k], 4) for k in _EVAL_KEYS}}})
    infos[WARM] = {k: round(ev[k], 4) for k in _EVAL_KEYS}
    return infos


HELD_OUT = "review-rm-heldout"
HELD_OUT_CONFIG = replace(SHIPPED, steps=150)
"""150 steps x 32 pairs: about 5 epochs of the 1,000 prefs_test pairs (the 1/16 proxy of overopt.py sees 625 pairs
for 150 steps)."""


def build_held_out(cfg=HELD_OUT_CONFIG) -> dict:
    """A reward model on data no other shipped reward model saw: review-sft + a fresh head trained on prefs_test.

    It is the *independent signal* of early stopping and of the hacking monitor (`rl_bench.py`, notebook 09):
    its errors are not review-rm's errors learned from the same pairs. Its held-out accuracy is measured on the
    first 1,000 pairs of prefs_train, which it never saw (prefs_test is its training set: do not evaluate it there).
    """
    from ..zoo import load_split

    tok = load_tokenizer()
    train, test = load_split("reviews", "prefs_test"), load_split("reviews", "prefs_train")[:1000]
    torch.manual_seed(cfg.seed)
    rm = ScalarHeadModel.from_causal_lm("review-sft")
    t0 = time.time()
    log = train_reward_model(rm, tok, train, cfg, progress=True)
    ev = evaluate_reward_model(rm, tok, test)
    info = {"config": asdict(cfg), "base": "review-sft", "trained_on": "reviews/prefs_test (1,000 pairs)",
            "parameters": count_parameters(rm), "train_minutes": round((time.time() - t0) / 60, 2),
            "final_loss": log.series("loss")[-1],
            "metrics": {"prefs_train[:1000]": {k: round(ev[k], 4) for k in _EVAL_KEYS}}}
    _save(rm, tok, HELD_OUT, info)
    return info["metrics"]


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps(build_ensemble(), indent=2))
