"""Build and load everything shipped in `data/`: tokenizer, generated datasets, small checkpoints.

    python -m minirlhf.zoo                 # rebuild all of data/ (see README for the time)
    python -m minirlhf.zoo --only data     # just the tokenizer and the datasets (seconds)

Everything is deterministic from the seeds in the configs. Datasets are JSONL files in the
formats TRL users know (prompt/completion, prompt/chosen/rejected) and load with `datasets`.
Other modules register extra build steps (reward models, diffusion models) in `BUILD_STEPS`.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from .models import DATA_DIR, MODELS_DIR, TOKENIZER_DIR, count_parameters, load_tokenizer, tiny_llama_config
from .tokenizer import build_char_tokenizer
from .worlds import arithmetic, reviews

WORLD_FILES = {
    "arithmetic": ("train", "dev", "test", "test_ood"),
    "reviews": ("sft", "prefs_train", "prefs_test", "prompts_test"),
}


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def load_split(world: str, split: str, as_list: bool = True):
    """A split of a built-in world through `datasets` (a list of dicts unless as_list=False)."""
    from datasets import load_dataset

    path = DATA_DIR / world / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m minirlhf.zoo --only data`")
    ds = load_dataset("json", data_files=str(path), split="train")
    return ds.to_list() if as_list else ds


def new_tiny_model(tokenizer, **overrides):
    from transformers import LlamaForCausalLM

    cfg = tiny_llama_config(len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            **overrides)
    return LlamaForCausalLM(cfg)


# ---------------------------------------------------------------------------------------------
# Build steps
# ---------------------------------------------------------------------------------------------


def build_data() -> dict:
    tok = build_char_tokenizer()
    tok.save_pretrained(TOKENIZER_DIR)
    for name, splits in (("arithmetic", arithmetic.generate()), ("reviews", reviews.generate())):
        for split, rows in splits.items():
            write_jsonl(rows, DATA_DIR / name / f"{split}.jsonl")
    return {"tokenizer": len(tok)}


@dataclass
class BaseModelRecipe:
    """How one shipped base checkpoint is trained (SFT from scratch on a world)."""

    name: str
    world: str
    split: str
    steps: int
    lr: float = 3e-3
    batch_size: int = 64
    seed: int = 0
    stop_at_dev_accuracy: float | None = None
    """Arithmetic only: stop as soon as greedy accuracy on the dev split reaches this."""


RECIPES = {
    # Stopped early on purpose: clearly imperfect, so RL has room to improve it (see README).
    # SFT learns chains in a sharp phase transition (0% -> 100% within ~400 steps), so instead of
    # guessing a step count we stop on the dev split as soon as it reaches 50% of chains correct.
    "arith-sft": BaseModelRecipe("arith-sft", "arithmetic", "train", steps=1200, stop_at_dev_accuracy=0.5),
    "review-sft": BaseModelRecipe("review-sft", "reviews", "sft", steps=800),
    # The same run to the end of its schedule (99.8% of test chains): the backbone of the verifiers
    # (a verifier must know arithmetic to check a step; real PRMs also start from a strong LM).
    "arith-sft-full": BaseModelRecipe("arith-sft-full", "arithmetic", "train", steps=1200),
}


def build_base_model(name: str) -> dict:
    from .evaluate import eval_arithmetic, eval_reviews
    from .sft import SFTConfig, train_sft

    recipe = RECIPES[name]
    torch.manual_seed(recipe.seed)
    tok = load_tokenizer()
    model = new_tiny_model(tok)
    rows = load_split(recipe.world, recipe.split)
    cfg = SFTConfig(lr=recipe.lr, batch_size=recipe.batch_size, steps=recipe.steps, seed=recipe.seed)
    eval_fn = stop_fn = None
    if recipe.stop_at_dev_accuracy is not None:
        dev = load_split("arithmetic", "dev")
        eval_fn = lambda m: {"dev_accuracy": eval_arithmetic(m, tok, dev)["accuracy"]}  # noqa: E731
        stop_fn = lambda metrics: metrics["dev_accuracy"] >= recipe.stop_at_dev_accuracy  # noqa: E731
    t0 = time.time()
    log = train_sft(model, tok, rows, cfg, eval_fn=eval_fn, eval_every=25 if eval_fn else 0,
                    stop_fn=stop_fn, progress=True)
    minutes = (time.time() - t0) / 60
    if recipe.world == "arithmetic":
        metrics = {s: eval_arithmetic(model, tok, load_split("arithmetic", s)) for s in ("test", "test_ood")}
    else:
        prompts = [r["prompt"] for r in load_split("reviews", "prompts_test")]
        metrics = {"prompts_test": eval_reviews(model, tok, prompts)}
    out = MODELS_DIR / name
    model.save_pretrained(out)
    tok.save_pretrained(out)
    info = {"recipe": asdict(recipe), "parameters": count_parameters(model), "train_minutes": round(minutes, 2),
            "final_loss": log.series("loss")[-1], "steps_trained": log.rows[-1]["step"] + 1,
            "metrics": metrics}
    (out / "build_info.json").write_text(json.dumps(info, indent=2))
    return info


def _lazy(module: str, function: str) -> Callable[[], dict]:
    """A build step defined in a method module, imported only when it runs."""
    def run() -> dict:
        import importlib

        return getattr(importlib.import_module(module), function)()
    return run


# In dependency order: the reward model starts from review-sft, the verifiers sample arith-sft.
BUILD_STEPS: dict[str, Callable[[], dict]] = {
    "data": build_data,
    "arith-sft": lambda: build_base_model("arith-sft"),
    "arith-sft-full": lambda: build_base_model("arith-sft-full"),
    "review-sft": lambda: build_base_model("review-sft"),
    "review-rm": _lazy("minirlhf.reward_model", "build_shipped"),
    "rm-bench": _lazy("minirlhf.reward_hacking.rm_bench", "build_shipped"),  # mines review-rm's worst pairs
    "rm-ensemble": _lazy("minirlhf.reward_hacking.ensemble_build", "build_ensemble"),  # review-rm's siblings + WARM
    "rm-odin": _lazy("minirlhf.reward_hacking.odin", "build_odin"),  # two-head (quality + length) reward model
    "rm-heldout": _lazy("minirlhf.reward_hacking.ensemble_build", "build_held_out"),  # an RM trained on prefs_test
    "rm-diverse": _lazy("minirlhf.reward_hacking.diverse", "build_diverse"),  # the monitor's diverse ensemble (~2 CPU min)
    "diffusion": _lazy("minirlhf.diffusion.models", "build_shipped"),
    "arith-verifiers": _lazy("minirlhf.prm_build", "build_verifiers"),
    "judges": _lazy("minirlhf.judges.build", "build_judges"),  # arith-genrm, review-judge, review-self (~1.5, 1.5, 2.6 CPU min; 9-12 min wall each under load)
    "genrm-cot": _lazy("minirlhf.judges.build", "build_genrm_cot"),  # arith-genrm-cot: the written check, then the verdict
    "rubric-judge": _lazy("minirlhf.judges.rubric_learned", "build_learned_rubric"),  # review-rubric: one yes/no question per criterion
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild the shipped data/ folder.")
    parser.add_argument("--only", nargs="*", default=None, help=f"steps to run, of {list(BUILD_STEPS)}")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for step in args.only or list(BUILD_STEPS):
        t0 = time.time()
        info = BUILD_STEPS[step]()
        print(f"[zoo] {step}: {json.dumps(info)[:400]} ({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
