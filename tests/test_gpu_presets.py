"""The GPU presets, `minirlhf eval` and chat prompts, offline: a random Qwen2 stand-in (stand_in.py) with a
byte-level BPE tokenizer and a ChatML template goes through the same code as Qwen2.5-Instruct."""

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml

from minirlhf import evaluate
from minirlhf.cli import main
from minirlhf.lm import FUSED_HEAD_MIN_VOCAB
from minirlhf.prompting import DEFAULT_INSTRUCTION, chat_completion, chat_prompt
from minirlhf.stand_in import build_stand_in
from minirlhf.worlds.arithmetic import extract_numeric_answer, numeric_answer_reward

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT / "data" / "gsm8k" / "gsm8k_test_300.jsonl"
PRESETS = sorted((ROOT / "configs" / "gpu").glob("*.yaml"))
PAIRS = [{"prompt": [{"role": "user", "content": f"Name a colour number {i}."}],
          "chosen": [{"role": "assistant", "content": "Blue."}],
          "rejected": [{"role": "assistant", "content": f"I cannot {i}."}]} for i in range(4)]


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    return str(build_stand_in(tmp_path_factory.mktemp("qwen2") / "model"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    return tmp_path


def run(capsys, argv) -> dict:
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    return json.loads(out[out.index("{\n"):])


# ------------------------------------------------------------------------------------------ chat prompts


def test_chat_prompt_asks_for_the_format_the_grader_reads(stand_in):
    from minirlhf.models import load_tokenizer

    tok = load_tokenizer(stand_in)
    prompt = chat_prompt(tok, "Janet has 3 ducks. How many?")
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      f"Janet has 3 ducks. How many?\n\n{DEFAULT_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")
    assert "'#### <number>'" in DEFAULT_INSTRUCTION
    # an answer written as the instruction asks is graded right; the number alone in prose is not the final line
    reward = numeric_answer_reward({prompt: Fraction(3)})
    assert reward([prompt, prompt], ["3 ducks.\n#### 3", "She has 3 ducks, then 4.\n#### 4"]) == [1.0, 0.0]
    p, c = chat_completion(tok, "Q?", "2+1=3\n#### 3")
    assert p == chat_prompt(tok, "Q?") and c == "2+1=3\n#### 3<|im_end|>\n"  # the end-of-turn token is EOS


def test_sft_on_gsm8k_fields_with_the_chat_template(workdir, capsys, stand_in):
    s = run(capsys, ["sft", "--model", stand_in, "--dataset", str(GSM8K), "--prompt-field", "question",
                     "--completion-field", "answer", "--chat-template", "--steps", "1", "--batch-size", "2",
                     "--max-length", "1024", "--device", "cpu", "--name", "sft_chat"])
    assert s["examples"] == 300 and math.isfinite(s["final_loss"])
    bad = ["sft", "--model", stand_in, "--dataset", str(GSM8K), "--steps", "1", "--device", "cpu"]
    assert main(bad) == 1  # GSM8K has no 'prompt' field: named, before the model loads
    assert "row 0, field 'prompt': missing" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ presets


def method_of(preset: Path) -> str:
    return preset.stem.split("_")[0]


SMALL = {"sft": ["--batch-size", "2", "--micro-batch-size", "1", "--max-length", "1024"],
         "dpo": ["--batch-size", "2", "--micro-batch-size", "1", "--max-length", "256", "--ref-batch-size", "2"],
         "grpo": ["--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "6", "--micro-batch-size", "2"]}


def run_preset(capsys, workdir, model: str, preset: Path) -> dict:
    """One step of `preset` on `model` (CPU, fp32, small batches): the run's summary."""
    cfg = yaml.safe_load(preset.read_text())
    method = method_of(preset)
    data = str(workdir / "prefs.jsonl") if method == "dpo" else str(GSM8K)
    if method == "sft" and "prompt_field" not in cfg:  # the preset for a user's own chats
        data = str(workdir / "chats.jsonl")
        Path(data).write_text("".join(json.dumps({"messages": r["prompt"] + r["chosen"]}) + "\n" for r in PAIRS))
    return run(capsys, [method, "--preset", str(preset), "--model", model, "--dataset", data, "--device", "cpu",
                        "--bf16", "false", "--steps", "1", "--name", preset.stem, *SMALL[method]])


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_each_gpu_preset_runs_one_step_on_the_stand_in(workdir, capsys, stand_in, preset):
    cfg = yaml.safe_load(preset.read_text())
    assert cfg["model"].startswith("Qwen/Qwen2.5-") and cfg["model"].endswith("-Instruct")
    s = run_preset(capsys, workdir, stand_in, preset)
    assert s["steps"] == 1 and s["model"] == stand_in
    if cfg.get("lora_r"):
        # adapters only: r * (d_in + d_out) for q, k, v, o (hidden 64, 2 KV heads of 16) and gate, up, down (MLP 128)
        per_layer = sum(cfg["lora_r"] * (i + o) for i, o in [(64, 64), (64, 32), (64, 32), (64, 64),
                                                              (64, 128), (64, 128), (128, 64)])
        assert s["lora_r"] == cfg["lora_r"] and s["trainable_parameters"] == 2 * per_layer
    else:
        assert s["trainable_parameters"] > 100_000  # every weight
    assert s.get("gradient_checkpointing") == cfg.get("gradient_checkpointing")
    from minirlhf.models import load_model

    assert load_model(workdir / "runs" / preset.stem / "model").config.model_type == "qwen2"  # merged, loadable


@pytest.fixture(scope="module")
def stand_in_32k(tmp_path_factory):
    """The stand-in with a model vocabulary of 32,768 behind its 512-token tokenizer (Qwen2.5's models too have more
    entries than their tokenizers: 151,936 to 151,665): large enough for the chunked LM head (`lm.fused_head`)."""
    return str(build_stand_in(tmp_path_factory.mktemp("qwen2_32k") / "model", vocab_size=FUSED_HEAD_MIN_VOCAB))


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_each_gpu_preset_runs_through_the_chunked_head(workdir, capsys, stand_in_32k, preset, chunked_head_rows):
    # LoRA, gradient checkpointing, micro-batches, the chat template and sampled ids past the tokenizer's vocabulary,
    # all with the log-probs scored from the final hidden states, a (chunk, V) block at a time
    s = run_preset(capsys, workdir, stand_in_32k, preset)
    rows = chunked_head_rows  # tests/conftest.py
    assert s["steps"] == 1 and rows and all(n > 0 for n in rows), rows


def test_ppo_with_lora_runs_through_the_chunked_head(workdir, capsys, stand_in_32k, chunked_head_rows):
    prefs = str(workdir / "prefs.jsonl")
    run(capsys, ["rm", "--model", stand_in_32k, "--dataset", prefs, "--device", "cpu", "--steps", "1",
                 "--batch-size", "2", "--name", "rm"])
    chunked_head_rows.clear()  # the reward model's run above has no LM head; count from here
    rows = chunked_head_rows
    s = run(capsys, ["ppo", "--model", stand_in_32k, "--dataset", prefs, "--reward-model", str(workdir / "runs" / "rm"
                     / "model"), "--device", "cpu", "--lora-r", "4", "--steps", "1", "--batch-size", "2",
                     "--mini-batch-size", "2", "--max-new-tokens", "4", "--norm-samples", "2", "--name", "ppo_lora"])
    assert s["steps"] == 1 and s["lora_r"] == 4
    # policy and reference passes of the rollout, the update, the evaluation: the 4 sampled tokens of 2 rows at most
    assert rows and max(rows) <= 2 * 4, rows


def lora_adapter_count(r: int) -> int:
    """Adapter weights of the stand-in under LoRA rank r on every linear layer: r * (d_in + d_out) for q, k, v,
    o (hidden 64, 2 KV heads of 16) and gate, up, down (MLP 128), in each of its 2 layers."""
    return 2 * sum(r * (i + o) for i, o in [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)])


def test_reward_model_and_ppo_train_with_lora_on_the_stand_in(workdir, capsys, stand_in):
    from minirlhf.models import ScalarHeadModel, load_model, load_tokenizer

    prefs = str(workdir / "prefs.jsonl")
    s = run(capsys, ["rm", "--model", stand_in, "--dataset", prefs, "--device", "cpu", "--lora-r", "4",
                     "--gradient-checkpointing", "--steps", "2", "--batch-size", "2", "--name", "rm_lora"])
    assert s["lora_r"] == 4 and s["gradient_checkpointing"]
    assert s["trainable_parameters"] == lora_adapter_count(4) + 64 + 1  # adapters + the head's weight and bias
    rm = ScalarHeadModel.from_pretrained(workdir / "runs" / "rm_lora" / "model")  # merged: a plain folder
    assert not any("lora" in n for n, _ in rm.named_parameters())
    tok = load_tokenizer(stand_in)
    ids = torch.tensor([tok("Blue.")["input_ids"]])
    base = ScalarHeadModel(load_model(stand_in))
    base.head.load_state_dict(rm.head.state_dict())
    with torch.no_grad():  # the merged backbone moved: the adapters learned something and were kept
        assert not torch.allclose(rm(ids, torch.ones_like(ids)), base(ids, torch.ones_like(ids)))
    s = run(capsys, ["ppo", "--model", stand_in, "--dataset", prefs, "--reward-model", str(workdir / "runs" / "rm_lora"
                     / "model"), "--device", "cpu", "--lora-r", "4", "--steps", "1", "--batch-size", "2",
                     "--mini-batch-size", "2", "--max-new-tokens", "4", "--norm-samples", "2", "--name", "ppo_lora"])
    assert s["lora_r"] == 4 and s["trainable_parameters"] == lora_adapter_count(4) and s["steps"] == 1
    assert load_model(workdir / "runs" / "ppo_lora" / "model").config.model_type == "qwen2"  # merged, loadable


def test_bf16_on_a_cpu_is_a_one_line_error(workdir, capsys, stand_in):
    assert main(["sft", "--model", stand_in, "--dataset", str(GSM8K), "--bf16", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --bf16 is autocast on CUDA; the device is cpu (drop --bf16 on a CPU)")
    assert err.count("\n") == 1


# ------------------------------------------------------------------------------------------ minirlhf eval


def test_pass_at_k_estimates_by_hand():
    # n = 4, c = 1, k = 2: 1 - C(3, 2) / C(4, 2) = 1 - 3/6; c = 0 -> 0; c = n -> 1
    assert evaluate.pass_at_k_estimates([1, 0, 4], 4, 2) == [0.5, 0.0, 1.0]
    assert evaluate.pass_at_k_estimates([3], 4, 1) == [0.75]  # pass@1 = c / n


def test_eval_answers_counts_and_intervals(monkeypatch):
    rows = [{"prompt": f"q{i}", "gold": Fraction(i)} for i in range(4)]

    def fake_generate(model, tok, prompts, max_new_tokens, temperature=1.0, **kw):
        if temperature == 0:  # greedy: right on q0 and q1
            return [f"#### {int(p[1:]) if int(p[1:]) < 2 else 99}" for p in prompts], None
        return [f"#### {p[1:]}" if i % 4 == 0 else "no answer" for i, p in enumerate(prompts)], None  # 1 of 4

    monkeypatch.setattr(evaluate, "generate", fake_generate)
    out = evaluate.eval_answers(torch.nn.Linear(1, 1), None, rows, n_samples=4, ks=(1, 4))
    g = out["greedy_accuracy"]
    se = math.sqrt(1 / 3) / 2  # sd of (1, 1, 0, 0) with Bessel's correction, / sqrt(4)
    assert g["value"] == 0.5 and g["se"] == pytest.approx(se, abs=1e-4)
    assert g["lo"] == pytest.approx(0.5 - 1.96 * se, abs=1e-4)
    assert out["pass@1"]["value"] == 0.25 and out["pass@4"]["value"] == 1.0 and out["greedy_has_answer"] == 1.0


def test_reward_accuracy_and_win_rate_with_a_fake_judge(monkeypatch):
    length = lambda ps, cs: [float(len(c)) for c in cs]  # noqa: E731
    rows = [{"prompt": "p", "chosen": "long one", "rejected": "short"}, {"prompt": "p", "chosen": "a", "rejected": "b"}]
    assert evaluate.reward_accuracy(length, rows)["accuracy"]["value"] == 0.75  # 1 + a tie (1/2)
    policy, ref = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    monkeypatch.setattr(evaluate, "generate", lambda m, tok, prompts, *a, **k: (
        ["longer" if m is policy else "x" for _ in prompts], None))
    w = evaluate.win_rate(policy, ref, None, length, ["p1", "p2"])
    assert w["win_rate"]["value"] == 1.0 and w["reward/policy"] == 6.0 and w["reward/reference"] == 1.0


def test_eval_command_on_gsm8k_writes_json_and_a_table(workdir, capsys, stand_in):
    out_file = workdir / "res" / "eval.json"
    s = run(capsys, ["eval", "--model", stand_in, "--dataset", str(GSM8K), "--chat-template", "--limit", "3",
                     "--n-samples", "2", "--k", "1,2", "--max-new-tokens", "4", "--device", "cpu",
                     "--out", str(out_file)])
    saved = json.loads(out_file.read_text())
    assert saved["task"] == "answers" and saved["n_prompts"] == 3 and saved["pass@2"]["n"] == 3
    assert 0 <= saved["greedy_accuracy"]["value"] <= saved["pass@2"]["value"] + 1 and s["out"] == str(out_file)


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "x.jsonl"], "--model is required"),
    (["--model", "./nowhere", "--dataset", "x.jsonl"], "no such model folder: ./nowhere"),
    (["--model", "M", "--dataset", "missing.jsonl"], "missing.jsonl: no such file"),
    (["--model", "M", "--dataset", "prefs.jsonl"], "pass --reward-model"),
    (["--model", "M", "--dataset", "x.jsonl", "--n-samples", "2", "--k", "1,4"], "--k 4 needs --n-samples >= 4"),
    (["--model", "M", "--dataset", "x.jsonl", "--k", "one"], "--k must be comma-separated integers"),
])
def test_eval_flag_mistakes_are_one_line_errors_before_any_model_loads(workdir, capsys, monkeypatch, argv, message):
    import minirlhf.models as models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(models, "load_tokenizer", refuse)
    (workdir / "x.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    assert main(["eval", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_chat_prompt_answers_grade_with_the_shared_extractor():
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:20]]
    assert all(extract_numeric_answer(r["answer"]) is not None for r in rows)
