"""The command line on tiny budgets, with a model saved to a temporary folder (as a user's local
or hub model would be) and small local files in each dataset format users bring."""

import json
import re
from pathlib import Path

import pytest

from minirlhf.cli import main
from minirlhf.models import ScalarHeadModel

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def workdir(tmp_path, monkeypatch, tok, tiny_model):
    monkeypatch.chdir(tmp_path)  # runs/ goes here
    tiny_model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    ScalarHeadModel(tiny_model).save_pretrained(tmp_path / "tiny-rm")
    tok.save_pretrained(tmp_path / "tiny-rm")
    return tmp_path


def run(capsys, argv):
    assert main(argv) == 0
    out = capsys.readouterr().out
    return json.loads(out[out.index("{"):])


def test_sft_on_conversational_messages(workdir, capsys):
    data = write_jsonl(workdir / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]}])
    s = run(capsys, ["sft", "--model", str(workdir / "tiny"), "--dataset", data, "--steps", "2",
                     "--batch-size", "2", "--name", "t"])
    assert s["examples"] == 2 and s["steps"] == 2
    assert (workdir / "runs/t/model/model.safetensors").exists()
    assert len((workdir / "runs/t/metrics.jsonl").read_text().splitlines()) >= 1


def test_rm_on_explicit_prompt_pairs_with_yaml_preset(workdir, capsys):
    data = write_jsonl(workdir / "prefs.jsonl", [
        {"prompt": "the film was", "chosen": " great .", "rejected": " awful ."},
        {"prompt": "it is", "chosen": " fun .", "rejected": " dull ."}])
    (workdir / "rm.yaml").write_text("steps: 2\nbatch_size: 2\n")
    s = run(capsys, ["rm", "--preset", str(workdir / "rm.yaml"), "--model", str(workdir / "tiny"),
                     "--dataset", data])
    assert s["pairs"] == 2 and s["steps"] == 2
    assert (workdir / "runs/rm/model/scalar_head.safetensors").exists()


def test_dpo_on_hh_style_implicit_prompts(workdir, capsys):
    data = write_jsonl(workdir / "hh.jsonl", [
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello there", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
        {"chosen": "\n\nHuman: 1+1\n\nAssistant: 2", "rejected": "\n\nHuman: 1+1\n\nAssistant: 3"}])
    s = run(capsys, ["dpo", "--model", str(workdir / "tiny"), "--dataset", data, "--steps", "2",
                     "--batch-size", "2", "--loss-type", "ipo"])
    assert s["method"].startswith("ipo") and s["steps"] == 2


def test_ppo_with_a_local_reward_model(workdir, capsys):
    data = write_jsonl(workdir / "prefs.jsonl", [
        {"prompt": [{"role": "user", "content": f"say hi {i}"}], "chosen": [{"role": "assistant", "content": "hi"}],
         "rejected": [{"role": "assistant", "content": "no"}]} for i in range(4)])
    s = run(capsys, ["ppo", "--model", str(workdir / "tiny"), "--reward-model", str(workdir / "tiny-rm"),
                     "--dataset", data, "--steps", "1", "--batch-size", "4", "--mini-batch-size", "2",
                     "--max-new-tokens", "6", "--norm-samples", "4"])
    assert s["steps"] == 1


def test_grpo_on_gsm8k_style_rows(workdir, capsys):
    data = write_jsonl(workdir / "gsm.jsonl", [
        {"question": "Tom has 2 apples and buys 3. How many?", "answer": "2+3=5\n#### 5"},
        {"question": "Ann has 4 pens and loses 1. How many?", "answer": "4-1=3\n#### 3"}])
    # the YAML preset's fields survive the variant's paper preset
    (workdir / "grpo.yaml").write_text("steps: 1\nprompts_per_step: 2\ngroup_size: 2\nmax_new_tokens: 6\n")
    s = run(capsys, ["grpo", "--preset", str(workdir / "grpo.yaml"), "--model", str(workdir / "tiny"),
                     "--dataset", data, "--variant", "rloo"])
    assert s["method"] == "rloo" and s["steps"] == 1


def test_grpo_trace_reward_on_the_builtin_world(workdir, capsys):
    s = run(capsys, ["grpo", "--reward", "trace", "--steps", "1", "--prompts-per-step", "2", "--group-size", "2",
                     "--max-new-tokens", "40"])
    assert s["reward"] == "trace" and s["steps"] == 1
    assert 0.0 <= s["accuracy"] <= 1.0 and s["accuracy_before"] is not None


def test_dpo_killed_then_resumed_with_the_same_command(workdir, capsys):
    data = write_jsonl(workdir / "prefs.jsonl", [
        {"prompt": f"q{i}", "chosen": " yes", "rejected": " no"} for i in range(4)])
    argv = ["dpo", "--model", str(workdir / "tiny"), "--dataset", data, "--batch-size", "2", "--log-every", "1",
            "--checkpoint-dir", str(workdir / "ckpt"), "--checkpoint-every", "1"]
    run(capsys, argv + ["--steps", "2"])  # as if killed after step 2 of 3
    s = run(capsys, argv + ["--steps", "3", "--resume"])
    rows = [json.loads(line) for line in (workdir / "runs/dpo/metrics.jsonl").read_text().splitlines()]
    # the file holds the whole run once: steps 1-2 (indices 0, 1) from the first run, step 3 from the resumed one
    assert s["steps"] == 3 and [r["step"] for r in rows] == [0, 1, 2]


def test_prm_on_its_tiny_preset(workdir, capsys):
    s = run(capsys, ["prm", "--preset", str(CONFIGS / "prm_tiny.yaml")])
    assert s["method"] == "PRM (gold labels, min)" and s["train_solutions"] == 256 and s["best_of"] == 8
    assert 0 <= s["accuracy"] <= s["accuracy_oracle"] and 0 <= s["trace_accuracy"] <= s["accuracy_oracle"]
    assert s["step_auc"] > 0.6  # 16 steps already score steps better than chance (measured 0.70)
    assert (workdir / "runs/prm/model/scalar_head.safetensors").exists()


@pytest.mark.parametrize("flags", [["--kind", "orm"], ["--kind", "implicit"], ["--labels", "mc-hard"]])
def test_prm_other_verifiers_and_labels(workdir, capsys, flags):
    s = run(capsys, ["prm", "--n-train", "16", "--steps", "2", "--batch-size", "8", "--n-eval-prompts", "4",
                     "--best-of", "4", "--mc-rollouts", "2"] + flags)
    assert s["steps"] == 2 and "accuracy" in s and ("step_auc" in s) == (flags[0] == "--labels")


def test_diffusion_on_its_tiny_preset(workdir, capsys):
    from minirlhf.diffusion import load_diffusion_model

    s = run(capsys, ["diffusion", "--preset", str(CONFIGS / "diffusion_tiny.yaml")])
    assert s["method"] == "ddpo" and s["reward_name"] == "box"
    assert s["reward"] > s["reward_before"] + 0.2  # DDPO_IS: 0.45 -> 0.86 in 10 rounds (measured)
    assert load_diffusion_model(str(workdir / "runs/diffusion/model")).kind == "ddpm"


@pytest.mark.parametrize("method,world", [("ddpo_sf", "points"), ("draft", "digits"), ("diffusion_dpo", "points"),
                                          ("flow_grpo", "points"), ("mix_grpo", "points")])
def test_diffusion_methods(workdir, capsys, method, world):
    s = run(capsys, ["diffusion", "--method", method, "--world", world, "--iterations", "2",
                     "--eval-per-label", "4", "--eval-every", "0", "--pairs-per-label", "8"])
    assert s["method"] == method and s["world"] == world and s["kl"] >= 0
    assert s["model"].endswith("flow" if method in ("flow_grpo", "mix_grpo") else "ddpm")


def test_bad_rows_name_file_row_and_field(workdir, capsys):
    data = write_jsonl(workdir / "bad.jsonl", [
        {"prompt": "a", "chosen": " b", "rejected": " c"},
        {"prompt": "a", "chosen": " same", "rejected": " same"}])
    assert main(["rm", "--model", str(workdir / "tiny"), "--dataset", data, "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: .*bad\.jsonl.*row 1.*(chosen|rejected).*\n", err), err
    s = run(capsys, ["rm", "--model", str(workdir / "tiny"), "--dataset", data, "--steps", "1",
                     "--batch-size", "1", "--drop-invalid"])
    assert s["pairs"] == 1


def test_invalid_utf8_row_is_named_or_dropped_and_counted(workdir, capsys):
    data = workdir / "latin1.jsonl"
    data.write_bytes(b'{"prompt": "a", "chosen": " b", "rejected": " c"}\n'
                     b'{"prompt": "a", "chosen": " caf\xe9", "rejected": " c"}\n')
    assert main(["rm", "--model", str(workdir / "tiny"), "--dataset", str(data), "--steps", "1"]) == 1
    assert "latin1.jsonl: row 1, field 'chosen': not valid UTF-8" in capsys.readouterr().err
    assert main(["rm", "--model", str(workdir / "tiny"), "--dataset", str(data), "--steps", "1",
                 "--batch-size", "1", "--drop-invalid"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out[out.index("{"):])["pairs"] == 1
    assert "dropped 1 of 2 invalid rows" in err and "row 1, field 'chosen'" in err


def test_unknown_preset_field_is_an_error(workdir, capsys):
    (workdir / "bad.yaml").write_text("stepz: 3\n")
    assert main(["sft", "--preset", str(workdir / "bad.yaml")]) == 1
    assert "unknown fields ['stepz'] for SFTConfig" in capsys.readouterr().err


def test_every_shipped_preset_parses_into_its_config():
    from pathlib import Path

    import yaml

    from minirlhf.cli import COMMANDS, build_config, build_parser

    parser = build_parser()
    presets = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
    assert len(presets) >= 8
    for path in presets:
        method = path.stem.split("_")[0]
        args = parser.parse_args([method, "--preset", str(path)])
        cfg = build_config(COMMANDS[method].config_cls, args)
        for key, value in yaml.safe_load(path.read_text()).items():
            # a config field, or one of the command's own flags (model, --chat-template, --lora-r ...)
            assert (getattr(cfg, key) if hasattr(cfg, key) else getattr(args, key)) == value, (path, key)


def test_baselines_subset_writes_one_table(workdir, capsys):
    assert main(["baselines", "--only", "sft (arith,arith-orm,arith-prm-gold"]) == 0
    out = capsys.readouterr().out
    table = (workdir / "runs/baselines/table.md").read_text()
    assert "| SFT (arith-sft) |" in table and "| best-of-16 (arith-prm-gold, min) |" in table
    results = json.loads((workdir / "runs/baselines/results.json").read_text())
    assert len(results) == 3 and "trace_accuracy" in results["best-of-16 (arith-orm)"]
    # pass@16 of 32 samples at T = 1: with 16 tries SFT solves far more chains than greedy once (0.78 vs 0.35, seed 0)
    assert results["SFT (arith-sft)"]["trace_accuracy"] < results["SFT (arith-sft)"]["pass_at_16"] <= 1.0
    assert "pass_at_16" in table.splitlines()[0]
    assert "| method |" in out
