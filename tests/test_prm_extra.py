"""Small additions to prm.py used by notebook 06 (per-prompt best-of-N for error bars)."""
import torch

from minirlhf import prm


def test_best_of_n_per_prompt_means_to_curve():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 16, generator=g)
    correct = torch.rand(5, 16, generator=g) > 0.5
    ns = [1, 2, 4, 16]
    per = prm.best_of_n_per_prompt(scores, correct, ns, seed=3)
    assert per.shape == (5, len(ns))
    curve = prm.best_of_n_curve(scores, correct, ns, seed=3)
    assert torch.allclose(per.mean(0), torch.tensor(curve), atol=1e-6)
    # N=1 averages every sample of the prompt; N=M picks the top-scored sample
    assert torch.allclose(per[:, 0], correct.float().mean(1))
    assert torch.equal(per[:, -1], prm.best_of_n(scores, correct).float())


def test_best_of_n_per_prompt_perfect_verifier():
    correct = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0]]).bool()
    per = prm.best_of_n_per_prompt(correct.float(), correct, [1, 4])
    assert per.tolist() == [[0.25, 1.0], [0.0, 0.0]]
