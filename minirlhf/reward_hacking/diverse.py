"""A diverse reward-model ensemble as the gold-free signal of the hacking monitor (issue 16, item 4).

    python -m minirlhf.zoo --only rm-diverse                     # train the members (~2 CPU min, 5-10 min wall loaded)
    python -m minirlhf.reward_hacking.diverse --seeds 0 1 2 --betas 0.01 0.1 --out runs/diverse_monitor
    python -m minirlhf.reward_hacking.diverse --out runs/diverse_monitor --collect docs/reward_hacking_diverse.json

The shipped siblings review-rm-s1/-s2 share review-rm's initialisation and data, and so its blind
spots: as PPO hacks review-rm their spread *falls* (docs/reward_hacking.md). Coste et al. (2024) and
Eisenstein et al. (2023) argue that an ensemble only sees over-optimisation when its members differ
in what they were built from. Each member here differs from the proxy (review-rm: review-sft
backbone, head seed 0, all of prefs_train) in initialisation AND data, and the members' data are
disjoint from each other's and from prefs_train / prefs_test (`fresh_pairs`, `policy_pairs`, checked by
`overlap`):

    review-rm-div1   review-sft backbone, head seed 101; 3,840 fresh grammar pairs (generator seed 1001)
    review-rm-div2   a randomly initialised 2-layer Llama (seed 102), no pretraining; 3,840 fresh grammar pairs
                     (seed 1002): another initialisation and another architecture size
    review-rm-div3   review-sft backbone, head seed 103; 1,920 pairs of two review-sft *samples* per prompt,
                     labelled by Bradley-Terry draws from gold (`policy_pairs`): fresh human labels on what the
                     policy writes, which the proxy never saw
    review-rm-div4   a bag-of-words linear model (`WordRM`, unknown words share one weight); 1,920 pairs of review-sft
                     samples labelled by gold (seed 1004). Added after div1-3 were seen to fail: every character-level
                     member scores PPO's non-word `greatilliant` (gold -2) as praise.

Each member's scores are standardised with its mean and std on prefs_test's texts (stored in
build_info.json), so their mean and spread are in common units (`Standardised`, `diverse_signals`).
Measured (docs/reward_hacking.md, "fourth part"): the mean of div1-3 fires on 1 of 3, then 2 of 6, hacked beta-0.01
runs; the mean of div1-4 on 5 of 6, every flag after gold has fallen below its best.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from .defences import RewardFn


@dataclass(frozen=True)
class MemberSpec:
    """One diverse member: what it starts from and what it learns from."""

    name: str
    """Folder under data/models."""
    backbone: str
    """"review-sft" (the pretrained backbone), "scratch" (a fresh tiny Llama, `layers` deep) or "words" (`WordRM`)."""
    seed: int
    """Seed of the head (and of a scratch backbone's) initialisation, and of the data order."""
    data: str
    """"grammar": fresh pairs from the world's generator; "policy": pairs of review-sft samples labelled by gold."""
    data_seed: int
    """Seed of the data generator (distinct per member, so the members' pairs differ)."""
    pairs: int
    """Preference pairs generated for this member."""
    layers: int = 3
    """Layers of a scratch backbone (review-sft has 3)."""


MEMBERS = (
    MemberSpec("review-rm-div1", "review-sft", 101, "grammar", 1001, 3840),
    MemberSpec("review-rm-div2", "scratch", 102, "grammar", 1002, 3840, layers=2),
    MemberSpec("review-rm-div3", "review-sft", 103, "policy", 1003, 1920),
    MemberSpec("review-rm-div4", "words", 104, "policy", 1004, 1920),     # added after seeing div1-3 fail (see docs)
)
STEPS = 120
"""Optimizer steps per member (x 32 pairs: one pass over a grammar member's 3,840 pairs, two over div3's 1,920)."""


def pair_key(row: dict) -> tuple:
    """A preference pair as an unordered key: (prompt, the two completions sorted)."""
    return (row["prompt"], *sorted((row["chosen"], row["rejected"])))


def overlap(a: Sequence[dict], b: Sequence[dict]) -> int:
    """Pairs of `a` that also occur in `b` (either order of chosen / rejected)."""
    keys = {pair_key(r) for r in b}
    return sum(pair_key(r) in keys for r in a)


def fresh_pairs(n: int, seed: int, exclude: Sequence[dict] = ()) -> list[dict]:
    """n preference pairs from the reviews generator with `seed`, none of them equal to a pair of `exclude`
    (nor to each other): data the proxy never saw. Same row format as prefs_train."""
    from ..worlds import reviews

    seen = {pair_key(r) for r in exclude}
    out, k = [], 0
    while len(out) < n:
        for r in reviews.generate_pairs(n, seed * 1000 + k):   # a new chunk per round, until n are unseen
            if pair_key(r) not in seen and len(out) < n:
                seen.add(pair_key(r))
                out.append(r)
        k += 1
    return out


def bt_label(prompt: str, a: str, b: str, rng: random.Random) -> dict:
    """One pair labelled as the world labels its data: a wins with P = sigmoid(gold(a) - gold(b))."""
    from ..worlds import reviews

    ga, gb = reviews.gold_reward(prompt + a), reviews.gold_reward(prompt + b)
    p_a = reviews.bradley_terry_prob(ga, gb)
    a_wins = rng.random() < p_a
    chosen, rejected = (a, b) if a_wins else (b, a)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected,
            "gold_chosen": round(ga if a_wins else gb, 6), "gold_rejected": round(gb if a_wins else ga, 6),
            "p_chosen": round(p_a if a_wins else 1.0 - p_a, 6)}


def policy_pairs(n: int, seed: int, exclude: Sequence[dict] = (), max_new_tokens: int = 64) -> list[dict]:
    """n pairs of two review-sft samples of one prompt (prompts from the sft split, never prompts_test),
    labelled by Bradley-Terry draws from gold; pairs with two equal samples, pairs of `exclude` and repeats are
    skipped (short samples such as " good ." can coincide with a pair of prefs_train)."""
    from ..lm import generate
    from ..models import load_model, load_tokenizer
    from ..zoo import load_split

    tok, policy = load_tokenizer(), load_model("review-sft").eval()
    rng = random.Random(seed)
    prompts = [r["prompt"] for r in load_split("reviews", "sft")]
    g = torch.Generator().manual_seed(seed)
    seen = {pair_key(r) for r in exclude}
    out = []
    while len(out) < n:
        batch = [rng.choice(prompts) for _ in range(n - len(out) + 16)]
        with torch.no_grad():
            a, _ = generate(policy, tok, batch, max_new_tokens, generator=g)
            b, _ = generate(policy, tok, batch, max_new_tokens, generator=g)
        for p, x, y in zip(batch, a, b):
            key = (p, *sorted((x, y)))
            if x != y and key not in seen and len(out) < n:
                seen.add(key)
                out.append(bt_label(p, x, y, rng))
    return out


def member_data(spec: MemberSpec, exclude: Sequence[dict]) -> list[dict]:
    return fresh_pairs(spec.pairs, spec.data_seed, exclude) if spec.data == "grammar" else \
        policy_pairs(spec.pairs, spec.data_seed, exclude)


def _init_member(spec: MemberSpec, tok):
    from ..models import ScalarHeadModel, load_model
    from ..zoo import new_tiny_model

    torch.manual_seed(spec.seed)
    if spec.backbone == "review-sft":
        backbone = load_model("review-sft")
    else:
        backbone = new_tiny_model(tok, num_layers=spec.layers)
    return ScalarHeadModel(backbone)


def build_diverse(members: Sequence[MemberSpec] = MEMBERS, steps: int = STEPS,
                  only: Sequence[str] | None = None) -> dict:
    """Train each member on its own data (disjoint from prefs_train, prefs_test and the other members'), save it
    under data/models/<name> with build_info.json (data overlap counts, accuracy, the standardisation).
    `only`: train just these members (the others' data are still generated, in order, so the data stay disjoint)."""
    from ..models import MODELS_DIR, count_parameters, load_tokenizer
    from ..reward_model import RewardConfig, RewardModelScorer, evaluate_reward_model, train_reward_model
    from ..zoo import load_split

    tok = load_tokenizer()
    train, test = load_split("reviews", "prefs_train"), load_split("reviews", "prefs_test")
    used: list[dict] = [*train, *test]
    infos = {}
    for spec in members:
        t0 = time.time()
        rows = member_data(spec, used)
        data_s = time.time() - t0
        overlaps = {"prefs_train": overlap(rows, train), "prefs_test": overlap(rows, test),
                    "earlier members": overlap(rows, used[len(train) + len(test):])}
        used += rows
        if only is not None and spec.name not in only:
            continue
        texts = [(r["prompt"], r[k]) for r in test for k in ("chosen", "rejected")]
        out = MODELS_DIR / spec.name
        t1 = time.time()
        if spec.backbone == "words":
            wrm = train_word_rm(rows, seed=spec.seed)
            train_s = time.time() - t1
            s = torch.tensor(wrm([p for p, _ in texts], [c for _, c in texts]))
            ev = word_rm_accuracy(wrm, test)
            cfg, params, loss = {"steps": 300, "lr": 0.05, "full_batch": True}, len(wrm.vocab) + 1, None
            save_word_rm(wrm, out)
        else:
            rm = _init_member(spec, tok)
            cfg = asdict(RewardConfig(steps=steps, seed=spec.seed))
            log = train_reward_model(rm, tok, rows, RewardConfig(steps=steps, seed=spec.seed), progress=True)
            train_s = time.time() - t1
            rm.eval()
            ev = evaluate_reward_model(rm, tok, test)
            s = torch.tensor(RewardModelScorer(rm, tok)([p for p, _ in texts], [c for _, c in texts]))
            params, loss = count_parameters(rm), log.series("loss")[-1]
            rm.save_pretrained(out)
            tok.save_pretrained(out)
        info = {"spec": asdict(spec), "config": cfg, "parameters": params,
                "data_seconds": round(data_s, 1), "train_seconds": round(train_s, 1),
                "overlap": overlaps, "final_loss": loss,
                "standardise": {"mean": float(s.mean()), "std": float(s.std())},
                "metrics": {"prefs_test": {k: round(ev[k], 4) for k in ("accuracy", "gold_accuracy", "noise_ceiling")}}}
        (out / "build_info.json").write_text(json.dumps(info, indent=2))
        infos[spec.name] = {k: info[k] for k in ("data_seconds", "train_seconds", "overlap", "metrics")}
        print(f"[rm-diverse] {spec.name}: {json.dumps(infos[spec.name])}", flush=True)
    return infos


# ---------------------------------------------------------------------------------------------
# A word-level member (post hoc: designed after seeing that every character-level member likes `greatilliant`)
# ---------------------------------------------------------------------------------------------

UNK = "<unk>"


def words(text: str) -> list[str]:
    """Lower-case words and punctuation marks: "It was good." -> ["it", "was", "good", "."]."""
    import re
    return re.findall(r"[a-z]+|[^\sa-z]", text.lower())


class WordRM(torch.nn.Module):
    """A bag-of-words reward model: r(x, y) = b + sum over the words w of x + y of theta_w, where every word outside
    the training vocabulary shares one weight theta_<unk>. It reads words, not characters: a non-word such as
    `greatilliant` is <unk>, whatever letters it shares with *great* and *brilliant*."""

    def __init__(self, vocab: Sequence[str]):
        super().__init__()
        self.vocab = [UNK, *sorted(set(vocab) - {UNK})]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.theta = torch.nn.Parameter(torch.zeros(len(self.vocab)))
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def counts(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, V) word counts, unknown words counted at <unk>."""
        out = torch.zeros(len(texts), len(self.vocab))
        for i, t in enumerate(texts):
            for w in words(t):
                out[i, self.index.get(w, 0)] += 1
        return out

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        return self.counts(texts) @ self.theta + self.bias                  # (B,)

    def __call__(self, prompts, completions=None):
        if completions is None:                                             # nn.Module call on texts
            return super().__call__(prompts)
        with torch.no_grad():
            return super().__call__([p + c for p, c in zip(prompts, completions)]).tolist()


def train_word_rm(rows: Sequence[dict], steps: int = 300, lr: float = 0.05, seed: int = 0) -> WordRM:
    """Full-batch Adam on the Bradley-Terry loss -log sigmoid(r(chosen) - r(rejected)), the vocabulary from `rows`
    minus the words seen only once (so <unk> learns what a rare or misspelled word is worth)."""
    from collections import Counter

    import torch.nn.functional as F

    torch.manual_seed(seed)
    freq = Counter(w for r in rows for k in ("chosen", "rejected") for w in words(r["prompt"] + r[k]))
    rm = WordRM([w for w, n in freq.items() if n > 1])
    xc = rm.counts([r["prompt"] + r["chosen"] for r in rows])
    xr = rm.counts([r["prompt"] + r["rejected"] for r in rows])
    opt = torch.optim.Adam(rm.parameters(), lr=lr)
    for _ in range(steps):
        loss = -F.logsigmoid((xc - xr) @ rm.theta).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rm


def word_rm_accuracy(rm: WordRM, rows: Sequence[dict]) -> dict:
    """Pairwise accuracy against the labels and against the gold order (pairs whose gold differs), as
    `reward_model.evaluate_reward_model` reports them, and the noise ceiling mean(max(p, 1 - p))."""
    p = [r["prompt"] for r in rows]
    c, r_ = torch.tensor(rm(p, [r["chosen"] for r in rows])), torch.tensor(rm(p, [r["rejected"] for r in rows]))
    gc, gr = torch.tensor([r["gold_chosen"] for r in rows]), torch.tensor([r["gold_rejected"] for r in rows])
    m = gc != gr
    pc = torch.tensor([r["p_chosen"] for r in rows])
    return {"accuracy": float((c > r_).float().mean()),
            "gold_accuracy": float(((c > r_) == (gc > gr))[m].float().mean()),
            "noise_ceiling": float(torch.maximum(pc, 1 - pc).mean())}


def save_word_rm(rm: WordRM, path: Path) -> None:
    from safetensors.torch import save_file
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({"theta": rm.theta.detach().contiguous(), "bias": rm.bias.detach().reshape(1)},
              str(path / "word_rm.safetensors"))
    (path / "vocab.json").write_text(json.dumps(rm.vocab))


def load_word_rm(path: Path) -> WordRM:
    from safetensors.torch import load_file

    from ..errors import ModelLoadError
    path = Path(path)
    if not (path / "word_rm.safetensors").is_file() or not (path / "vocab.json").is_file():
        raise ModelLoadError(f"{path}: not a word-level reward model (needs word_rm.safetensors and vocab.json)")
    vocab = json.loads((path / "vocab.json").read_text())
    rm = WordRM(vocab)
    if rm.vocab != vocab:
        raise ModelLoadError(f"{path / 'vocab.json'}: the vocabulary must start with {UNK!r} and be sorted")
    w = load_file(str(path / "word_rm.safetensors"))
    with torch.no_grad():
        rm.theta.copy_(w["theta"])
        rm.bias.copy_(w["bias"][0])
    return rm.eval()


class Standardised:
    """A reward function rescaled to (r - mean) / std."""

    def __init__(self, fn: RewardFn, mean: float, std: float):
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.fn, self.mean, self.std = fn, mean, std

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        return [(r - self.mean) / self.std for r in self.fn(prompts, completions)]


def load_members(names: Sequence[str] = tuple(m.name for m in MEMBERS)) -> list[Standardised]:
    """The shipped diverse members as standardised reward functions."""
    from ..models import MODELS_DIR, ScalarHeadModel, load_tokenizer
    from ..reward_model import RewardModelScorer

    tok = load_tokenizer()
    out = []
    for n in names:
        st = json.loads((MODELS_DIR / n / "build_info.json").read_text())["standardise"]
        fn = load_word_rm(MODELS_DIR / n) if (MODELS_DIR / n / "vocab.json").is_file() else \
            RewardModelScorer(ScalarHeadModel.from_pretrained(n).eval(), tok)
        out.append(Standardised(fn, st["mean"], st["std"]))
    return out


def diverse_signals(members: Sequence[RewardFn] | None = None) -> dict[str, RewardFn]:
    """Evaluation signals for `rl_bench.EvalSignals`: each member, their mean and their spread (std over members)."""
    from .defences import EnsembleReward

    members = list(members) if members is not None else load_members()
    ens = EnsembleReward(members, "mean")
    return {**{f"div{i + 1}": m for i, m in enumerate(members)}, "divmean": ens, "divspread": ens.spread}


# ---------------------------------------------------------------------------------------------
# The experiment: PPO against review-rm alone, the diverse signals logged at each evaluation
# ---------------------------------------------------------------------------------------------

DIVERSE_MONITORS = {"divmean": ("falls", 0.05), "div1": ("falls", 0.05), "div2": ("falls", 0.05),
                    "div3": ("falls", 0.05), "divspread": ("rises", 0.05), "div4": ("falls", 0.05),
                    "divmean4": ("falls", 0.05), "divspread4": ("rises", 0.05), "gold": ("falls", 0.05)}
"""Signal -> (direction that means trouble, change over the window that counts). Members are standardised
(std 1 on prefs_test), so 0.05 is 5% of a member's spread over real texts."""


def first_flags(c: dict, window: int = 2, min_rise: float = 0.02,
                monitors: dict = DIVERSE_MONITORS) -> dict:
    """The first step at which the monitor fires on each recorded signal (None: never)."""
    from .defences import first_flag, hacking_flags
    out = {}
    for name, (direction, change) in monitors.items():
        if name in c:
            i = first_flag(hacking_flags(c["proxy"], c[name], window, min_rise, change, direction))
            out[name] = None if i is None else c["step"][i]
    return out


class SampleRecorder:
    """An evaluation "signal" that keeps the evaluation samples (so new signals can be scored after the run)."""

    def __init__(self):
        self.samples: list[list[str]] = []

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        self.samples.append(list(completions))
        return [0.0] * len(completions)


def run(seeds: Sequence[int], betas: Sequence[float], out_dir: Path, steps: int = 40) -> dict:
    """PPO against review-rm for each (beta, seed), every evaluation logging gold and the diverse signals;
    the evaluation samples are kept in the run's JSON (`samples`, one list per evaluation)."""
    from ..models import ScalarHeadModel, load_tokenizer
    from ..reward_model import RewardModelScorer
    from .rl_bench import RLBenchConfig, run_curve

    tok = load_tokenizer()
    proxy = RewardModelScorer(ScalarHeadModel.from_pretrained("review-rm").eval(), tok)
    heldout = RewardModelScorer(ScalarHeadModel.from_pretrained("review-rm-heldout").eval(), tok)
    signals = {**diverse_signals(), "heldout": heldout}
    out_dir.mkdir(parents=True, exist_ok=True)
    res = {}
    for beta in betas:
        for s in seeds:
            path = out_dir / f"beta{beta:g}_seed{s}.json"
            if path.is_file():
                res[path.stem] = json.loads(path.read_text())
                continue
            rec = SampleRecorder()
            c = run_curve(proxy, replace(RLBenchConfig(), beta=beta, seed=s, steps=steps), {**signals, "samples": rec})
            c["samples"] = rec.samples
            c["first_flags"] = first_flags(c)
            c["gold_peak_step"] = c["step"][max(range(len(c["gold"])), key=c["gold"].__getitem__)]
            path.write_text(json.dumps(c, indent=1))
            res[path.stem] = c
            print(f"[diverse beta {beta:g} seed {s}] {c['seconds']} s, gold peak at {c['gold_peak_step']}, "
                  f"first flags {c['first_flags']}", flush=True)
    return res


def rescore(c: dict, signals: dict[str, RewardFn], eval_prompts: Sequence[str] | None = None) -> dict:
    """Score a finished run's kept evaluation samples (`c["samples"]`) with new signals: {name: [mean per evaluation]}.
    The evaluation prompts are the first len(samples[0]) rows of prompts_test, as in `rl_bench.run_curve`."""
    from ..zoo import load_split
    if "samples" not in c:
        raise ValueError("this run kept no samples (rerun it with diverse.run)")
    if eval_prompts is None:
        eval_prompts = [r["prompt"] for r in load_split("reviews", "prompts_test")][:len(c["samples"][0])]
    return {k: [round(sum(fn(list(eval_prompts), s)) / len(s), 4) for s in c["samples"]] for k, fn in signals.items()}


def collect(out_dir: Path) -> dict:
    """Every run under `out_dir` with its first flags (windows 2 and 1) and each member's build info
    (docs/reward_hacking_diverse.json)."""
    from ..models import MODELS_DIR

    runs = {}
    extra = None
    for path in sorted(Path(out_dir).glob("beta*_seed*.json")):
        c = json.loads(path.read_text())
        if "samples" in c and "div4" not in c:        # runs made before div4 existed: score their kept samples
            if extra is None:
                four = load_members()
                extra = {"div4": four[3], **{k + "4": v for k, v in diverse_signals(four).items()
                                             if k in ("divmean", "divspread")}}
            c.update(rescore(c, extra))
        c.pop("samples", None)                          # kept in the run's own file, not in the summary
        c["first_flags"], c["first_flags_window1"] = first_flags(c, 2), first_flags(c, 1)
        runs[path.stem] = c
    members = {m.name: json.loads((MODELS_DIR / m.name / "build_info.json").read_text()) for m in MEMBERS}
    return {"what": "diverse.py: PPO against review-rm alone (40 steps, lr 3e-4), the diverse members' standardised "
                    "scores, their mean and spread logged at every evaluation; first flags of the monitor "
                    "(min_rise 0.02, change 0.05) per signal", "members": members, "runs": runs}


if __name__ == "__main__":
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--betas", type=float, nargs="+", default=[0.01])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default="runs/diverse_monitor")
    ap.add_argument("--build", action="store_true", help="train the members first")
    ap.add_argument("--collect", default=None, help="write the runs under --out to this JSON file and stop")
    a = ap.parse_args()
    if a.collect:
        Path(a.collect).write_text(json.dumps(collect(Path(a.out)), indent=1) + "\n")
        raise SystemExit(0)
    if a.build:
        print(json.dumps(build_diverse(), indent=1))
    run(a.seeds, a.betas, Path(a.out), a.steps)
