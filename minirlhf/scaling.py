"""What a 0.5B-1.5B model needs to train on one GPU: LoRA, gradient checkpointing, bf16 autocast.

None of this changes a method's math; each trades memory or speed for the same update:

* **LoRA** (Hu et al., 2022) through the optional `peft` package (`pip install -e ".[lora]"`):
  W = W0 + (alpha / r) B A with W0 frozen and only A (r x d_in), B (d_out x r) trained, B = 0 at
  the start, so the policy starts equal to its base. The reference policy of DPO, GRPO (beta > 0)
  and PPO is then the *same* frozen base with the adapters switched off (`AdapterDisabledReference`):
  one copy of the weights instead of two.
* **Gradient checkpointing**: keep only each layer's input in the forward pass, recompute the rest
  in the backward pass (about a third more compute, activations of one layer instead of all).
* **bf16 autocast** (CUDA only): matrix products in bfloat16 inside the forward pass, weights, grads
  and optimiser state in fp32 (mixed precision). Log-probs are still computed in fp32
  (`lm.logprobs_from_logits` upcasts the logits). On a CPU it is an error, not a silent no-op.

The runners apply these from flags (`--lora-r 16 --gradient-checkpointing --bf16`; `minirlhf <method>
--help`) through `prepare_policy` and `reference_for`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
from torch import nn

from .errors import ConfigError


@dataclass
class ScaleOptions:
    """How to fit a model on one GPU (the runners' flags of the same names)."""

    lora_r: int = 0
    """LoRA rank r (0: full fine-tuning, no adapters)."""
    lora_alpha: float = 32.0
    """LoRA's alpha: the update is scaled by alpha / r."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch's input (0 keeps on-policy log-probs exact in RL)."""
    lora_target_modules: str = "all-linear"
    """Comma-separated module names to adapt (q_proj,v_proj), or "all-linear" (every linear layer but the head)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of storing them."""
    bf16: bool = False
    """Run the forward pass under bfloat16 autocast (CUDA only; weights stay fp32)."""

    def validate(self, device: torch.device) -> None:
        """ConfigError naming the flag, before any model is loaded."""
        if self.lora_r < 0:
            raise ConfigError(f"--lora-r must be >= 0, got {self.lora_r}")
        if self.lora_r and self.lora_alpha <= 0:
            raise ConfigError(f"--lora-alpha must be > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.bf16 and device.type != "cuda":
            raise ConfigError(f"--bf16 is autocast on CUDA; the device is {device} (drop --bf16 on a CPU)")
        if self.lora_r:
            require_peft()


def require_peft():
    """The peft module, or a one-line ConfigError saying how to install it."""
    try:
        import peft
    except ImportError:
        raise ConfigError("--lora-r needs the optional 'peft' package: pip install peft "
                          "(or pip install -e \".[lora]\")") from None
    return peft


def add_lora(model: nn.Module, opts: ScaleOptions) -> nn.Module:
    """The model wrapped with LoRA adapters (a peft PeftModel); only the adapters train."""
    peft = require_peft()
    targets = opts.lora_target_modules
    cfg = peft.LoraConfig(r=opts.lora_r, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                          target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
                          task_type="CAUSAL_LM")
    try:
        return peft.get_peft_model(model, cfg)
    except ValueError as e:  # a target module the model does not have
        raise ConfigError(f"LoRA: {e}", "--lora-target-modules") from None


def autocast_forward(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Make `model(...)` run under CUDA autocast (in place; returns the model). The wrapper keeps
    the forward's signature (`functools.wraps`), which `lm.sample` reads; `model.autocast_dtype`
    tells `lm.token_logprobs` to run its chunked LM head (`lm.fused_head`) under the same autocast."""
    inner = model.forward
    model.autocast_dtype = dtype

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        with torch.autocast("cuda", dtype=dtype):
            return inner(*args, **kwargs)

    model.forward = forward
    return model


def prepare_policy(model: nn.Module, opts: ScaleOptions) -> nn.Module:
    """Gradient checkpointing, then LoRA, then autocast, in that order (peft needs the inputs of a
    checkpointed frozen model to require grad, which `enable_input_require_grads` arranges)."""
    if opts.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if opts.lora_r:
            model.enable_input_require_grads()
    if opts.lora_r:
        model = add_lora(model, opts)
    if opts.bf16:
        autocast_forward(model)
    return model


def prepare_scalar_model(model: nn.Module, opts: ScaleOptions) -> nn.Module:
    """A reward or value model (`models.ScalarHeadModel`): checkpointing and LoRA on its backbone,
    the one-output head trained in full (it starts random: adapters alone could not learn it),
    autocast around the whole forward (the head reads the backbone's trunk, not its forward)."""
    model.backbone = prepare_policy(model.backbone, replace(opts, bf16=False))
    return autocast_forward(model) if opts.bf16 else model


class AdapterDisabledReference(nn.Module):
    """The reference policy of a LoRA policy: the same frozen base, adapters switched off.

    `ref(input_ids=..., ...)` runs the policy's forward inside `disable_adapter()`, in eval mode,
    so it computes pi_ref = the base model without a second copy of its weights. The policy is
    held outside the module tree: `ref.eval().requires_grad_(False)`, which the trainers call on
    their reference, leaves the policy's adapters trainable.
    """

    def __init__(self, policy: nn.Module):
        super().__init__()
        object.__setattr__(self, "policy", policy)  # not a submodule (see above)

    @property
    def config(self):
        return self.policy.config

    def parameters(self, recurse: bool = True):  # the device and dtype of the weights it runs on
        return self.policy.parameters(recurse)

    def requires_grad_(self, requires_grad: bool = True):  # never freezes the policy's adapters
        return self

    def forward(self, *args, **kwargs):
        was_training = self.policy.training
        self.policy.eval()
        try:
            with self.policy.disable_adapter():
                return self.policy(*args, **kwargs)
        finally:
            self.policy.train(was_training)

    def get_base_model(self):  # what lm.sample reads the forward's signature from
        return self.policy.get_base_model()

    @property
    def autocast_dtype(self):  # the policy's (`autocast_forward`), which its forward runs under
        return getattr(self.policy, "autocast_dtype", None)


def reference_for(policy: nn.Module, opts: ScaleOptions, load_copy) -> nn.Module:
    """The frozen reference: the base under `policy`'s adapters (LoRA), else `load_copy()` (a second
    load of the starting weights), made eval, frozen, and autocast like the policy."""
    if opts.lora_r:
        return AdapterDisabledReference(policy)
    ref = load_copy().eval().requires_grad_(False)
    return autocast_forward(ref) if opts.bf16 else ref


def trainable_parameters(model: nn.Module) -> int:
    """Parameters that receive gradients (the adapters only, under LoRA)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merged(model: nn.Module) -> nn.Module:
    """The plain model to save: LoRA adapters merged into the base weights (W0 + alpha/r B A), so the
    saved folder loads with `load_model` like any causal LM; a reward model gets its backbone merged;
    other models unchanged."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    if hasattr(getattr(model, "backbone", None), "merge_and_unload"):  # a ScalarHeadModel under LoRA
        model.backbone = model.backbone.merge_and_unload()
    return model
