"""Tests for minirlhf/prm.py: step labels, boundaries under any padding, losses, aggregations, MC labels."""

import math

import pytest
import torch

from minirlhf.lm import encode_pairs, last_token_index, token_logprobs
from minirlhf.models import ScalarHeadModel
from minirlhf.prm_rl import DenseRLConfig, dense_advantages, process_returns, train_dense_rl
from minirlhf.prm import (VerifierConfig, aggregate_steps, auc, step_auc, best_of_n, best_of_n_curve, check_prm_row,
                          encode_steps, gather_steps, gold_step_labels, implicit_prm_loss,
                          implicit_step_rewards, majority_vote, monte_carlo_labels, orm_loss, prm_loss,
                          scatter_steps, split_into_steps, step_boundary_mask, to_prm_rows,
                          train_verifier)
from minirlhf.worlds.arithmetic import check_chain
from minirlhf.zoo import new_tiny_model

PROMPT = "3 +4 *2 *0 +5\n"  # true running values 7, 4, 0, 5
RIGHT = "3+4=7\n7*2=4\n4*0=0\n0+5=5\n#### 5"
HIDDEN = "3+4=7\n7*2=5\n5*0=0\n0+5=5\n#### 5"  # wrong step 2, hidden by "*0": right answer


def tiny(tok, seed=0):
    torch.manual_seed(seed)
    return new_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64).eval()


# --- step labels and the TRL PRM format ------------------------------------------------------


def test_split_into_steps_keeps_pieces_between_separators():
    assert split_into_steps(RIGHT) == ["3+4=7", "7*2=4", "4*0=0", "0+5=5", "#### 5"]
    assert split_into_steps("1+1=2\n") == ["1+1=2"]  # trailing separator: no empty step
    assert split_into_steps("1+1=2\n\n#### 2") == ["1+1=2", "", "#### 2"]


def test_gold_labels_are_prefix_closed_step_valid():
    assert gold_step_labels(PROMPT, RIGHT) == [True] * 5
    res = check_chain(PROMPT, HIDDEN)
    assert res.answer_correct and not res.trace_correct
    assert res.step_valid == [True, False, True, True]
    assert res.step_on_track == [True, False, True, True]  # on-track forgives the hidden error ...
    assert gold_step_labels(PROMPT, HIDDEN) == [True, False, False, False, False]  # ... our labels do not
    assert gold_step_labels(PROMPT, "3+4=7\n\n7*2=4") == [True, False, False]  # blank line is wrong
    # right steps, wrong answer line
    assert gold_step_labels(PROMPT, "3+4=7\n7*2=4\n4*0=0\n0+5=5\n#### 6") == [True] * 4 + [False]


def test_to_prm_rows_and_validation():
    rows = to_prm_rows([PROMPT, PROMPT], [RIGHT, HIDDEN])
    assert rows[1] == {"prompt": PROMPT, "completions": split_into_steps(HIDDEN),
                       "labels": [True, False, False, False, False]}
    with pytest.raises(ValueError, match=r"row 3, field 'labels'"):
        check_prm_row({"prompt": "x", "completions": ["a", "b"], "labels": [True]}, 3)
    with pytest.raises(ValueError, match=r"row 0, field 'completions'"):
        check_prm_row({"prompt": "x", "completions": ["a\nb"], "labels": [True]}, 0)
    with pytest.raises(ValueError, match=r"row 2, field 'prompt': missing"):
        check_prm_row({"completions": ["a"], "labels": [True]}, 2)
    with pytest.raises(ValueError, match=r"row 1, field 'labels'"):
        to_prm_rows(["p", "q"], ["a", "b\nc"], [[True], [0.5, 1.5]])


# --- step boundaries under left and right padding ---------------------------------------------


def _right_padded(batch):
    """Move every row's real tokens to the start (all padding on the right)."""
    out = {k: torch.zeros_like(v) for k, v in batch.items() if v.dtype == torch.long}
    out["input_ids"].fill_(0)
    for i in range(batch["input_ids"].shape[0]):
        keep = batch["attention_mask"][i].bool()
        n = int(keep.sum())
        for k in out:
            out[k][i, :n] = batch[k][i][keep]
    return out


def test_step_boundaries_left_and_right_padding(tok):
    rows = [{"prompt": "1 +1\n", "completions": ["1+1=2", "#### 2"], "labels": [True, True]},
            {"prompt": "3 +4 *2 *0 +5\n", "completions": split_into_steps(HIDDEN),
             "labels": [True, False, False, False, False]}]
    left = encode_steps(tok, rows)
    right = _right_padded(left)
    sep = tok.convert_tokens_to_ids("\n")
    right_mask = step_boundary_mask(right["input_ids"], right["completion_mask"], sep)
    for b in (left, {**right, "step_mask": right_mask}):
        assert b["step_mask"].sum(-1).tolist() == [2, 5]
        # every boundary is a "\n" inside the completion, never the prompt's own "\n"
        assert (b["input_ids"][b["step_mask"]] == sep).all()
        assert (b["completion_mask"][b["step_mask"]] == 1).all()
    # the labels sit on the boundaries, in order
    assert gather_steps(left["labels"], left["step_mask"])[0].tolist() == [[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]
    # a scalar-head model reads the same step scores whatever the padding side
    model = ScalarHeadModel(tiny(tok)).eval()
    with torch.no_grad():
        s_left, m_left = gather_steps(model(left["input_ids"], left["attention_mask"]), left["step_mask"])
        s_right, m_right = gather_steps(model(right["input_ids"], right["attention_mask"]), right_mask)
    assert torch.equal(m_left, m_right)
    torch.testing.assert_close(s_left, s_right, atol=1e-5, rtol=1e-5)


def test_policy_layout_last_step_ends_at_eos(tok):
    b = encode_pairs(tok, ["1 +1\n", "3 +4 *2 *0 +5\n"], ["1+1=2\n#### 2", HIDDEN])
    sep = tok.convert_tokens_to_ids("\n")
    mask = step_boundary_mask(b["input_ids"], b["completion_mask"], sep)
    assert mask.sum(-1).tolist() == [2, 5]
    last = [int(row.nonzero().max()) for row in mask]
    assert [int(b["input_ids"][i, t]) for i, t in enumerate(last)] == [tok.eos_token_id] * 2
    # scatter_steps is the inverse of gather_steps
    vals = [[0.1, 0.2], [1.0, 2.0, 3.0, 4.0, 5.0]]
    packed, pmask = gather_steps(scatter_steps(vals, mask), mask)
    assert packed[pmask].tolist() == pytest.approx([0.1, 0.2, 1.0, 2.0, 3.0, 4.0, 5.0])
    with pytest.raises(ValueError, match="row 0: 3 step values for 2 step boundaries"):
        scatter_steps([[1, 2, 3], vals[1]], mask)


# --- losses -----------------------------------------------------------------------------------


def test_prm_loss_hand_values_and_mask():
    mask = torch.tensor([[0, 1, 0, 1]])
    labels = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    assert prm_loss(torch.zeros(1, 4), labels, mask).item() == pytest.approx(math.log(2))
    logits = torch.tensor([[99.0, 2.0, -99.0, -1.0]])  # off-boundary logits must not count
    expect = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2
    assert prm_loss(logits, labels, mask).item() == pytest.approx(expect, rel=1e-6)
    # the gradient pushes each boundary logit towards its label, and ignores the rest
    x = torch.zeros(1, 4, requires_grad=True)
    prm_loss(x, labels, mask).backward()
    assert x.grad[0, 1] < 0 and x.grad[0, 3] > 0 and x.grad[0, 0] == 0


def test_orm_loss_reads_last_token_only():
    attn = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]])
    logits = torch.tensor([[5.0, -5.0, 7.0, 0.0], [3.0, 1.0, 2.0, 9.0]])
    y = torch.tensor([1.0, 0.0])
    expect = (math.log(2) + math.log(1 + math.exp(2.0))) / 2  # logit 0 label 1; logit 2 label 0
    assert orm_loss(logits, attn, y).item() == pytest.approx(expect, rel=1e-6)


def test_implicit_step_rewards_sum_to_sequence_log_ratio(tok):
    beta = 0.3
    b = encode_pairs(tok, ["1 +1\n", "3 +4 *2 *0 +5\n"], ["1+1=2\n#### 2", HIDDEN])
    policy, ref = tiny(tok, 0), tiny(tok, 1)
    with torch.no_grad():
        logp = token_logprobs(policy, b["input_ids"], b["attention_mask"])
        ref_logp = token_logprobs(ref, b["input_ids"], b["attention_mask"])
    comp = b["completion_mask"].float()
    mask = step_boundary_mask(b["input_ids"], b["completion_mask"], tok.convert_tokens_to_ids("\n"))
    rewards, smask = implicit_step_rewards(logp, ref_logp, comp, mask, beta)
    seq = beta * ((logp - ref_logp) * comp).sum(-1)
    torch.testing.assert_close(rewards.sum(-1), seq, atol=1e-5, rtol=1e-5)
    assert smask.sum(-1).tolist() == [2, 5] and (rewards[~smask] == 0).all()
    # hand example: tokens [p, a, \n, b, EOS], log-ratios 0, 1, 2, 3, 4 -> steps (1 + 2), (3 + 4)
    lr = torch.tensor([[9.0, 1.0, 2.0, 3.0, 4.0]])
    r, _ = implicit_step_rewards(lr, torch.zeros_like(lr), torch.tensor([[0.0, 1, 1, 1, 1]]),
                                 torch.tensor([[0, 0, 1, 0, 1]]), beta=0.5)
    assert r.tolist() == [[1.5, 3.5]]


def test_implicit_prm_loss_is_log2_at_reference_and_sign():
    logp = torch.randn(3, 5, requires_grad=True)
    mask = torch.ones(3, 5)
    y = torch.tensor([1.0, 0.0, 1.0])
    loss = implicit_prm_loss(logp, logp.detach(), mask, y, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    assert (logp.grad[0] < 0).all() and (logp.grad[1] > 0).all()  # raise right, lower wrong


# --- using a PRM ------------------------------------------------------------------------------


def test_aggregations_on_hand_made_scores():
    scores = torch.tensor([[0.9, 0.5, 0.8, 0.0], [0.2, 0.0, 0.0, 0.0], [0.7, 0.7, 0.7, 0.7]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]).bool()
    assert aggregate_steps(scores, mask, "min").tolist() == pytest.approx([0.5, 0.2, 0.0])
    assert aggregate_steps(scores, mask, "product").tolist() == pytest.approx([0.36, 0.2, 0.0])
    assert aggregate_steps(scores, mask, "last").tolist() == pytest.approx([0.8, 0.2, 0.0])
    assert aggregate_steps(scores, mask, "mean").tolist() == pytest.approx([2.2 / 3, 0.2, 0.0])
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate_steps(scores, mask, "max")


def test_best_of_n_and_majority_vote():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.7, 0.2]])
    correct = torch.tensor([[False, True, False], [False, True, True]])
    assert best_of_n(scores, correct).tolist() == [True, False]  # argmax, first on ties
    answers = [["3", "4", "4", None], ["1", "2", None, None], [None, None]]
    correct_l = [[False, True, True, False], [False, True, False, False], [False, False]]
    assert majority_vote(answers, correct_l) == [True, False, False]  # "4" wins; tie -> first ("1")


def test_best_of_n_curve_endpoints():
    correct = torch.tensor([[True, False, False, False], [False, False, False, False], [True, True, False, True]])
    curve = best_of_n_curve(correct.float(), correct, [1, 2, 4])  # an oracle verifier
    assert curve[0] == pytest.approx(correct.float().mean().item())  # N = 1: the mean of all samples
    assert curve[2] == pytest.approx(2 / 3)  # N = M: some sample is correct
    assert curve[0] <= curve[1] <= curve[2]
    anti = best_of_n_curve(-correct.float(), correct, [4])  # a verifier that prefers wrong samples
    assert anti == [pytest.approx(0.0)]


def test_monte_carlo_labels_with_fake_rollouts():
    prompt = "1 +1 +1\n"  # answer 3
    steps = [["1+1=2", "2+1=3", "#### 3"], ["1+1=5", "5+1=6", "#### 6"]]
    seen = []

    def fake_rollout(contexts, n):
        seen.extend(contexts)
        out = []
        for _, prefix in contexts:
            last = prefix.strip().split("\n")[-1]
            value = int(last.split("=")[1])
            # from a right value: 3 of 4 rollouts answer 3; from 5: one lucky guess; from 6: none
            good = {2: 3, 3: 3, 5: 1, 6: 0}[value]
            out.append(["#### 3"] * good + ["#### 0"] * (n - good))
        return out

    outcome = lambda p, c: c.strip().endswith("#### 3")  # noqa: E731
    hard, soft = monte_carlo_labels([prompt, prompt], steps, fake_rollout, outcome, n_rollouts=4)
    assert soft == [[0.75, 0.75, 1.0], [0.25, 0.0, 0.0]]
    assert hard == [[True, True, True], [True, False, False]]  # the lucky guess: a false positive
    assert seen == [(prompt, "1+1=2\n"), (prompt, "1+1=2\n2+1=3\n"), (prompt, "1+1=5\n"), (prompt, "1+1=5\n5+1=6\n")]


def test_process_returns_sum_and_min():
    comp = torch.tensor([[0, 1, 1, 1, 1, 1, 0]])
    steps = torch.tensor([[0, 0, 1, 0, 1, 1, 0]])
    r = torch.tensor([[0.0, 0.0, 0.5, 0.0, -1.0, 2.0, 0.0]])
    assert process_returns(r, steps, comp, "sum").tolist() == [[0, 1.5, 1.5, 1.0, 1.0, 2.0, 0]]
    assert process_returns(r, steps, comp, "min").tolist() == [[0, -1.0, -1.0, -1.0, -1.0, 2.0, 0]]


def test_dense_advantages_outcome_only_is_rloo_and_min_form_adds_step_credit():
    comp = torch.tensor([[1, 1, 1], [1, 1, 0]])
    steps = torch.tensor([[1, 0, 1], [0, 1, 0]])
    outcome = torch.tensor([[1.0, 0.0]])  # one prompt, G = 2 -> RLOO advantages +1, -1
    r = torch.tensor([[1.0, 0.0, 3.0], [0.0, 2.0, 0.0]])
    a0 = dense_advantages(outcome, r, steps, comp, "min", process_coef=0.0)
    assert a0.tolist() == [[1, 1, 1], [-1, -1, 0]]
    # step rewards 1, 3, 2: mean 2, std sqrt(2/3) -> normalised -1.2247, 1.2247, 0
    a = dense_advantages(outcome, r, steps, comp, "min", process_coef=1.0)
    z = 1.5 ** 0.5
    torch.testing.assert_close(a, torch.tensor([[1 - z, 1 + z, 1 + z], [-1.0, -1.0, 0.0]]), atol=1e-3, rtol=0)


# --- training loops (tiny models, a few steps) ------------------------------------------------


def test_train_verifier_prm_and_orm_lower_the_loss(tok):
    rows = to_prm_rows([PROMPT] * 4, [RIGHT, HIDDEN, RIGHT, HIDDEN])
    cfg = VerifierConfig(steps=30, batch_size=4, lr=3e-3, log_every=29)
    log = train_verifier(ScalarHeadModel(tiny(tok)), tok, rows, "prm", cfg)
    assert log.series("loss")[-1] < 0.8 * log.series("loss")[0]
    orows = [{"prompt": PROMPT, "completion": c, "label": y} for c, y in ((RIGHT, 1), ("3+4=1\n#### 1", 0))]
    log = train_verifier(ScalarHeadModel(tiny(tok)), tok, orows * 2, "orm", cfg)
    assert log.series("loss")[-1] < 0.8 * log.series("loss")[0]
    with pytest.raises(ValueError, match="reference model"):
        train_verifier(tiny(tok), tok, orows, "implicit", cfg)


def test_train_verifier_early_stopping_restores_the_best_weights(tok):
    rows = to_prm_rows([PROMPT] * 4, [RIGHT, HIDDEN, RIGHT, HIDDEN])
    seen, vals = [], iter([1.0, 3.0, 2.0])

    def eval_fn(m):  # scores 1, 3, 2 at steps 5, 10, 15: the weights after step 10 must come back
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(vals)

    model = ScalarHeadModel(tiny(tok))
    cfg = VerifierConfig(steps=15, batch_size=4, lr=3e-3, eval_every=5)
    log = train_verifier(model, tok, rows, "prm", cfg, eval_fn=eval_fn)
    assert [r["step"] for r in log.rows if "val" in r] == [5, 10, 15]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, seen[1][k])
    assert any(not torch.equal(seen[1][k], seen[2][k]) for k in seen[1])  # training went on after step 10


def test_auc_hand_computed_with_ties():
    # positives {0.35, 0.8} vs negatives {0.1, 0.4}: 3 of 4 pairs ordered right
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auc([0.5, 0.5, 0.2], [1, 0, 0]) == pytest.approx(0.75)  # one tie (1/2) + one win
    assert auc([0.9, 0.1], [False, True]) == 0.0
    with pytest.raises(ValueError, match="positive and one negative"):
        auc([0.1, 0.2], [1, 1])


def test_step_auc_of_a_perfect_step_scorer_is_one(tok):
    class Oracle(torch.nn.Module):  # the PRM logit at each step boundary = +/-5 from the gold label
        def forward(self, ids, mask):
            out = torch.zeros(ids.shape)
            text = [tok.decode(r[m.bool()]) for r, m in zip(ids, mask)]
            for i, t in enumerate(text):
                labels = gold_step_labels(PROMPT, t[len(PROMPT):])
                pos = (ids[i] == tok.convert_tokens_to_ids("\n")).nonzero().flatten()[1:]  # skip the prompt's
                for p, y in zip(pos, labels):
                    out[i, p] = 5.0 if y else -5.0
            return out
    assert step_auc(Oracle(), tok, [PROMPT] * 2, [RIGHT, HIDDEN]) == 1.0


def test_train_dense_rl_runs_and_logs_finite_metrics(tok):
    policy, ref = tiny(tok, 0), tiny(tok, 0)
    cfg = DenseRLConfig(iterations=2, prompts_per_iter=2, group_size=2, max_new_tokens=8,
                        process_coef=1.0, form="sum")
    step_fn = lambda ps, cs: [[1.0] * len(split_into_steps(c)) for c in cs]  # noqa: E731
    log = train_dense_rl(policy, ref, tok, [PROMPT, "1 +1\n"], lambda ps, cs: [0.0] * len(cs), step_fn, cfg)
    assert len(log.rows) == 2 and all(math.isfinite(v) for r in log.rows for v in r.values())


def test_step_boundaries_match_split_into_steps_when_eos_follows_a_newline(tok):
    """A sampled "a\\nb\\n<eos>" has the two steps split_into_steps gives; the EOS closes step 2."""
    sep, eos = tok.convert_tokens_to_ids("\n"), tok.eos_token_id
    comps = ["1+1=2\n#### 2", "1+1=2\n2+3=5\n", ""]
    left = encode_pairs(tok, ["1 +1\n", "1 +1 +3\n", "1 +1\n"], comps)  # each completion ends with EOS
    for b in (left, _right_padded(left)):
        mask = step_boundary_mask(b["input_ids"], b["completion_mask"], sep, eos)
        assert mask.sum(-1).tolist() == [len(split_into_steps(c)) for c in comps] == [2, 2, 1]
        # every row's last boundary is its EOS, so each completion token belongs to a step
        assert mask[torch.arange(3), last_token_index(b["completion_mask"])].all()
        # without eos_id, "a\\nb\\n<eos>" gets an empty third step
        assert step_boundary_mask(b["input_ids"], b["completion_mask"], sep).sum(-1).tolist() == [2, 3, 1]


def test_within_prompt_auc_ignores_prompt_difficulty():
    from minirlhf.prm import within_prompt_auc

    # prompt 0 is easy (high scores), prompt 1 hard: pooled AUC rewards that, within-prompt does not
    scores = torch.tensor([[0.9, 0.8, 0.7], [0.3, 0.2, 0.1]])
    labels = torch.tensor([[0, 1, 1], [1, 0, 0]])  # the worst chain of prompt 0 is right, ...
    assert within_prompt_auc(scores, labels) == pytest.approx((0.0 + 1.0) / 2)  # hand: AUC 0 and 1
    assert auc(scores.flatten(), labels.flatten()) == pytest.approx(6 / 9)  # pooled: 6 of 9 pairs ordered
    # prompts whose samples are all right or all wrong carry no ranking: skipped, and none left is an error
    assert within_prompt_auc(torch.tensor([[0.1, 0.9], [0.5, 0.4]]), torch.tensor([[1, 1], [1, 0]])) == 1.0
    with pytest.raises(ValueError, match="no prompt"):
        within_prompt_auc(torch.tensor([[0.1, 0.9]]), torch.tensor([[0, 0]]))
