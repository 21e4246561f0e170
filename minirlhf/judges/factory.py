"""The judge factory: a `--judge` spec -> a judge function, for the CLI (`minirlhf dpo --online`) and `baselines.py`.

    parse_judge("review-rm")              -> ("reward-model", "review-rm")   checked before anything loads
    make_judge("pointwise:review-judge", tok)(prompts, completions) -> scores
    held_out_pointwise(tok)               -> a self-judge's held-out agreement check (online_dpo's held_out_fn)
"""

from __future__ import annotations

from ..errors import ConfigError

SHORT_JUDGES = {"review-rm": ("reward-model", "review-rm"), "review-judge": ("pairwise", "review-judge"),
                "self": ("self", None), "rubric": ("rubric", None), "gold": ("gold", None)}


def parse_judge(spec: str) -> tuple[str, str | None]:
    """`--judge` -> (kind, model or None), checked before anything loads: a short name (review-rm, review-judge, self,
    rubric, gold) or KIND:MODEL with KIND in reward-model, pairwise, pointwise."""
    if spec in SHORT_JUDGES:
        return SHORT_JUDGES[spec]
    kind, sep, model = spec.partition(":")
    if sep and kind in ("reward-model", "pairwise", "pointwise") and model:
        return kind, model
    if sep:
        raise ConfigError(f"--judge {spec!r}: KIND:MODEL needs KIND reward-model, pairwise or pointwise and a model "
                          "name or folder after the colon")
    from pathlib import Path

    from ..models import SCALAR_HEAD, resolve

    folder = Path(resolve(spec)).expanduser()
    if folder.is_dir():  # a bare model folder or built-in name: a reward model if it has a scalar head, else pairwise
        return ("reward-model" if (folder / SCALAR_HEAD).is_file() else "pairwise"), spec
    raise ConfigError(f"--judge must be one of {', '.join(SHORT_JUDGES)}, KIND:MODEL (KIND reward-model, pairwise or "
                      f"pointwise) or a model folder; got {spec!r} (no such folder)")


def make_judge(name: str, tok, k: int = 4, policy=None):
    """A judge function (prompts, completions) -> scores (rows grouped k by k) from its `--judge` spec.
    `policy` is the model being trained (needed by `self`: it judges itself through a frozen snapshot)."""
    from ..judges import pairwise
    from ..judges.online_dpo import self_judge
    from ..models import load_model
    from ..worlds.reviews import gold_rewards

    kind, model_name = parse_judge(name)
    if kind == "gold":
        return gold_rewards
    if kind == "rubric":
        from ..judges.rubric import fitted_checklist
        return fitted_checklist()
    if kind == "self":
        if policy is None:
            raise ConfigError("--judge self needs the policy it judges")
        return self_judge(policy, tok, pairwise.pointwise_probs)
    if kind == "pairwise":  # a generative pairwise judge: round robin of both-orders verdicts
        model = load_model(model_name).eval()
        return lambda ps, cs: pairwise.group_scores_from_pairs(
            lambda p, a, b: pairwise.pairwise_probs(model, tok, p, a, b), ps, cs, k)
    if kind == "pointwise":  # the same judge grading one review at a time: p('Y') after "Good? "
        model = load_model(model_name).eval()
        return lambda ps, cs: pairwise.pointwise_probs(model, tok, ps, cs).tolist()
    from ..models import ScalarHeadModel
    from ..reward_model import RewardModelScorer

    return RewardModelScorer(ScalarHeadModel.from_pretrained(model_name).eval(), tok)


def held_out_pointwise(tok, n: int = 400):
    """held_out_fn for a self-judge: its pointwise grades of the first `n` prefs_test pairs, compared, vs gold."""
    from ..judges import pairwise
    from ..worlds import reviews
    from ..zoo import load_split

    return pairwise.pointwise_agreement_fn(tok, load_split("reviews", "prefs_test")[:n], reviews.gold_reward)
