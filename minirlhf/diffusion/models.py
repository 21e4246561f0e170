"""Tiny label-conditioned denoisers (DDPM and rectified flow) and classifiers, trained from scratch.

    python -m minirlhf.diffusion.models        # build_shipped(): all base models, ~2-3 min on a CPU

* `Denoiser`: a residual MLP f(x_t, t, label) -> R^D. With kind="ddpm" it predicts the noise
  (Ho et al., 2020, Eq. 14: L = ||eps - eps_theta(sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps, t)||^2);
  with kind="flow" it predicts the velocity of rectified flow (Liu et al., 2022;
  L = ||(x_1 - x_0) - v_theta((1 - t) x_0 + t x_1, t)||^2, x_1 ~ N(0, I)).
* `Classifier`: an MLP on 64 pixels -> 10 logits. The proxy classifier (the reward) and the gold
  classifier (the judge, never optimised against) differ in width, seed and training half.

Checkpoints are `data/models/diffusion-*/` with `model.safetensors`, `config.json` and
`build_info.json`; `load_diffusion_model(name)` reads them back.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import ModelLoadError
from ..models import MODELS_DIR
from .samplers import alpha_bar
from .worlds import DIGIT_LABELS, POINT_LABELS, digit_labels, load_digits_tensors, sample_points


@dataclass
class NetConfig:
    """Shape of a tiny denoiser or classifier (saved as config.json)."""

    kind: str
    """"ddpm" (predicts eps), "flow" (predicts velocity) or "classifier"."""
    world: str
    """"points" (D = 2) or "digits" (D = 64)."""
    dim: int
    """Data dimension D."""
    n_labels: int
    """Number of conditioning labels (denoisers) or classes (classifiers)."""
    hidden: int = 128
    """Width of the MLP."""
    depth: int = 3
    """Residual blocks (denoiser) or hidden layers (classifier)."""
    clip_x0: float | None = None
    """DDIM clips the predicted x0 to [-clip_x0, clip_x0] (digits live in [-1, 1])."""


def time_features(t: Tensor, n: int = 16) -> Tensor:
    """Sinusoidal features of t in [0, 1]: (B,) -> (B, 2n), frequencies 1 .. 1000 (Transformer style)."""
    freqs = torch.exp(torch.linspace(0, math.log(1000.0), n))  # (n,)
    angles = t[:, None] * freqs[None] * math.pi  # (B, n)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class Denoiser(nn.Module):
    """Residual MLP: h = W x + c(t, label); h += MLP(h + c) per block; out = W' silu(h)."""

    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = config
        self.kind = config.kind
        H = config.hidden
        self.inp = nn.Linear(config.dim, H)
        self.time = nn.Linear(32, H)
        self.label = nn.Embedding(config.n_labels, H)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(H, H), nn.SiLU(), nn.Linear(H, H))
                                    for _ in range(config.depth))
        self.out = nn.Linear(H, config.dim)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        c = self.time(time_features(t)) + self.label(labels)  # (B, H) the condition
        h = self.inp(x) + c  # (B, H)
        for block in self.blocks:
            h = h + block(h + c)
        return self.out(nn.functional.silu(h))  # (B, D)


class Classifier(nn.Module):
    """MLP on flattened 8x8 digits in [-1, 1]: (B, 64) -> (B, 10) logits."""

    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = config
        layers, d = [], config.dim
        for _ in range(config.depth):
            layers += [nn.Linear(d, config.hidden), nn.SiLU()]
            d = config.hidden
        self.net = nn.Sequential(*layers, nn.Linear(d, config.n_labels))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# ---------------------------------------------------------------------------------------------
# Training losses (pure) and the training loop
# ---------------------------------------------------------------------------------------------


def ddpm_loss(net: Denoiser, x0: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Simple DDPM loss, Ho et al. (2020) Eq. 14, with continuous t ~ U(0, 1). x0: (B, D)."""
    t = torch.rand(x0.shape[0], generator=generator)  # (B,)
    eps = torch.randn(x0.shape, generator=generator)
    ab = alpha_bar(t)[:, None]  # (B, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return ((net(x_t, t, labels) - eps) ** 2).mean()


def flow_matching_loss(net: Denoiser, x0: Tensor, labels: Tensor,
                       generator: torch.Generator | None = None) -> Tensor:
    """Rectified-flow / conditional flow matching loss: ||v_theta(x_t, t) - (x_1 - x_0)||^2. x0: (B, D)."""
    t = torch.rand(x0.shape[0], generator=generator)  # (B,)
    x1 = torch.randn(x0.shape, generator=generator)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    return ((net(x_t, t, labels) - (x1 - x0)) ** 2).mean()


@dataclass
class TrainConfig:
    """Training of one base model (from scratch, CPU-sized)."""

    steps: int = 3000
    """Optimizer steps."""
    batch_size: int = 256
    """Examples per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (cosine decay to 5%)."""
    seed: int = 0
    """Seed for initialisation, data order and noise."""


def train_denoiser(config: NetConfig, train: TrainConfig, data_fn) -> tuple[Denoiser, list[float]]:
    """Train a Denoiser; data_fn(batch_size, generator) -> (x0 (B, D), labels (B,))."""
    g = torch.Generator().manual_seed(train.seed)
    torch.manual_seed(train.seed)
    net = Denoiser(config)
    opt = torch.optim.AdamW(net.parameters(), lr=train.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(i, train.steps) / train.steps)))
    loss_fn = ddpm_loss if config.kind == "ddpm" else flow_matching_loss
    losses = []
    for _ in range(train.steps):
        x0, labels = data_fn(train.batch_size, g)
        loss = loss_fn(net, x0, labels, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return net.eval(), losses


def train_classifier(config: NetConfig, x: Tensor, y: Tensor, steps: int = 1500, lr: float = 2e-3,
                     seed: int = 0, noise_std: float = 0.1) -> Classifier:
    """Cross-entropy training with small Gaussian input noise (so gradients are not wild off-data)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    clf = Classifier(config)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,), generator=g)
        xb = x[idx] + noise_std * torch.randn(128, x.shape[1], generator=g)
        loss = nn.functional.cross_entropy(clf(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clf.eval()


# ---------------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------------


def save_net(net: nn.Module, path: Path, info: dict | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    # float16 on disk halves the size (weights are upcast to float32 on load; samples do not change visibly)
    save_file({k: v.detach().half().contiguous() for k, v in net.state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(asdict(net.config), indent=2))
    if info is not None:
        (path / "build_info.json").write_text(json.dumps(info, indent=2))


def load_diffusion_model(name_or_path: str) -> nn.Module:
    """Load a shipped net by name ("diffusion-points-ddpm", ...) or from a folder path; anything
    else (no such folder or name, a folder without config.json or model.safetensors) is a
    ModelLoadError saying which."""
    path = Path(name_or_path)
    if not path.is_dir():
        if not (MODELS_DIR / name_or_path).is_dir():
            shipped = ", ".join(sorted(d.name for d in MODELS_DIR.glob("diffusion-*"))) or "none built yet"
            raise ModelLoadError(f"diffusion model not found: {name_or_path} is neither a folder nor a shipped "
                                 f"model ({shipped})")
        path = MODELS_DIR / name_or_path
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} has no config.json: not a diffusion model folder (shipped ones are built "
                             "by `python -m minirlhf.diffusion.models`)")
    if not (path / "model.safetensors").exists():
        raise ModelLoadError(f"no weights: {path} has config.json but no model.safetensors")
    config = NetConfig(**json.loads((path / "config.json").read_text()))
    net = Classifier(config) if config.kind == "classifier" else Denoiser(config)
    net.load_state_dict({k: v.float() for k, v in load_file(str(path / "model.safetensors")).items()})
    return net.eval()


# ---------------------------------------------------------------------------------------------
# The shipped models
# ---------------------------------------------------------------------------------------------


def points_data(batch_size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    x, labels, _ = sample_points(batch_size, g)
    return x, labels


def digits_data_fn():
    x, y = load_digits_tensors("a")

    def fn(batch_size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=g)
        return x[idx], digit_labels(y[idx])

    return fn


SHIPPED = {
    "diffusion-points-ddpm": (NetConfig("ddpm", "points", 2, POINT_LABELS, hidden=128, depth=2),
                              TrainConfig(steps=3000, batch_size=256)),
    "diffusion-points-flow": (NetConfig("flow", "points", 2, POINT_LABELS, hidden=128, depth=2),
                              TrainConfig(steps=3000, batch_size=256)),
    "diffusion-digits-ddpm": (NetConfig("ddpm", "digits", 64, DIGIT_LABELS, hidden=160, depth=2, clip_x0=1.0),
                              TrainConfig(steps=4000, batch_size=128)),
    "diffusion-digits-flow": (NetConfig("flow", "digits", 64, DIGIT_LABELS, hidden=160, depth=2),
                              TrainConfig(steps=4000, batch_size=128)),
}
CLASSIFIERS = {
    # name: (config, training half of the digits, seed)
    "diffusion-digits-proxy-clf": (NetConfig("classifier", "digits", 64, 10, hidden=64, depth=1), "a", 1),
    "diffusion-digits-gold-clf": (NetConfig("classifier", "digits", 64, 10, hidden=256, depth=2), "b", 2),
}


def build_shipped(names: list[str] | None = None, out_dir: Path | None = None) -> dict:
    """Train and save every diffusion base model and classifier. Returns {name: build_info}.

    Runs on one thread: tiny MLPs train faster without per-op synchronisation (the previous
    setting is restored at the end).
    """
    out_dir = Path(out_dir) if out_dir else MODELS_DIR
    infos = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for name, (config, train) in SHIPPED.items():
        if names and name not in names:
            continue
        t0 = time.time()
        data_fn = points_data if config.world == "points" else digits_data_fn()
        net, losses = train_denoiser(config, train, data_fn)
        print(f"[diffusion] {name}: trained in {time.time() - t0:.0f}s", flush=True)
        infos[name] = {"train": asdict(train), "parameters": sum(p.numel() for p in net.parameters()),
                       "final_loss": sum(losses[-100:]) / 100, "train_seconds": round(time.time() - t0, 1)}
        save_net(net, out_dir / name, infos[name])
    for name, (config, half, seed) in CLASSIFIERS.items():
        if names and name not in names:
            continue
        t0 = time.time()
        x, y = load_digits_tensors(half)
        clf = train_classifier(config, x, y, seed=seed)
        x_other, y_other = load_digits_tensors("b" if half == "a" else "a")
        with torch.no_grad():
            acc = (clf(x_other).argmax(1) == y_other).float().mean().item()
        infos[name] = {"train_half": half, "seed": seed, "parameters": sum(p.numel() for p in clf.parameters()),
                       "heldout_accuracy": round(acc, 4), "train_seconds": round(time.time() - t0, 1)}
        save_net(clf, out_dir / name, infos[name])
    torch.set_num_threads(threads)
    return infos


if __name__ == "__main__":
    t0 = time.time()
    for k, v in build_shipped().items():
        print(k, json.dumps(v))
    print(f"built in {time.time() - t0:.0f}s")
