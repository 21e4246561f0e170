"""The command line's error boundary: every user mistake is one line `error: ... (where)` and exit 1,
found before any data or model is loaded; `--debug` shows the traceback; bugs keep theirs."""

import subprocess
import sys

import pytest

from minirlhf import cli
from minirlhf.errors import ConfigError, UserError


@pytest.fixture
def nothing_loads(monkeypatch, tmp_path):
    """Fail the test if a command gets as far as loading a model, a tokenizer or a dataset."""
    monkeypatch.chdir(tmp_path)

    def boom(*a, **k):
        raise AssertionError("loaded something before the config was checked")

    import minirlhf.models
    import minirlhf.zoo

    for mod, name in ((minirlhf.models, "load_model"), (minirlhf.models, "load_tokenizer"),
                      (minirlhf.zoo, "load_split")):
        monkeypatch.setattr(mod, name, boom)


def one_error_line(capsys, argv) -> str:
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == ""
    return lines[0]


@pytest.mark.parametrize("argv, message", [
    (["dpo", "--batch-size", "-4"], "error: --batch-size must be >= 1, got -4 (minirlhf dpo)"),
    (["sft", "--steps", "0"], "error: --steps must be >= 1, got 0 (minirlhf sft)"),
    (["rm", "--lr", "-1e-3"], "error: --lr must be > 0 and finite, got -0.001 (minirlhf rm)"),
    (["ppo", "--lr", "0"], "error: --lr must be > 0 and finite, got 0.0 (minirlhf ppo)"),
    (["ppo", "--beta", "-.5"], "error: --beta must be >= 0 and finite, got -0.5 (minirlhf ppo)"),
    (["ppo", "--mini-batch-size", "64"], "error: --mini-batch-size (64) must be <= --batch-size (32)"),
    (["dpo", "--beta", "nan"], "error: --beta must be a number, got nan (minirlhf dpo)"),
    (["dpo", "--loss-type", "dpop"], "error: --loss-type must be one of dpo, cdpo, ipo, hinge, simpo, orpo, kto"),
    (["grpo", "--group-size", "1"], "error: --group-size must be >= 2, got 1 (minirlhf grpo)"),
    (["grpo", "--prompts-per-step", "-2"], "error: --prompts-per-step must be >= 1, got -2"),
    (["grpo", "--variant", "ppo"], "error: --variant must be one of grpo, dr_grpo, dapo, rloo, gspo"),
    (["prm", "--kind", "crm"], "error: --kind must be one of prm, orm, implicit, got 'crm'"),
    (["diffusion", "--iterations", "-1"], "error: --iterations must be >= 1, got -1 (minirlhf diffusion)"),
    (["sft", "--resume"], "error: --resume needs --checkpoint-dir (the folder to resume from)"),
    (["dpo", "--checkpoint-every", "5"], "error: --checkpoint-every needs --checkpoint-dir"),
    (["dpo", "--lr", "abc"], "error: argument --lr: invalid float value: 'abc' (minirlhf dpo)"),
    (["dpo", "--stepz", "3"], "error: unrecognized arguments: --stepz 3"),
    (["sft", "--threads", "0"], "error: --threads must be >= 1, got 0"),
    (["sft", "--preset", "missing.yaml"], "error: no such file (--preset missing.yaml)"),
])
def test_bad_flags_are_one_line_before_anything_loads(nothing_loads, capsys, argv, message):
    assert one_error_line(capsys, argv).startswith(message)


def test_bad_presets_are_one_line(nothing_loads, capsys, tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    assert one_error_line(capsys, ["sft", "--preset", "list.yaml"]) == \
        "error: expected a mapping of config fields, got a list (--preset list.yaml)"
    (tmp_path / "broken.yaml").write_text("steps: [1\n")
    assert one_error_line(capsys, ["sft", "--preset", "broken.yaml"]).startswith(
        "error: not valid YAML: ")
    (tmp_path / "neg.yaml").write_text("batch_size: -8\n")
    assert one_error_line(capsys, ["dpo", "--preset", "neg.yaml"]) == \
        "error: --batch-size must be >= 1, got -8 (minirlhf dpo)"


def test_negative_numbers_parse_in_every_notation():
    assert cli._join_negative_numbers(["--lr", "-1e-3", "--beta", "-.5", "--steps", "-2", "--name", "x"]) == \
        ["--lr=-1e-3", "--beta=-.5", "--steps=-2", "--name", "x"]
    assert cli._join_negative_numbers(["--resume", "--steps", "3"]) == ["--resume", "--steps", "3"]


def test_debug_shows_the_traceback(nothing_loads, monkeypatch):
    monkeypatch.delenv("MINIRLHF_DEBUG", raising=False)
    with pytest.raises(ConfigError, match="--batch-size must be >= 1"):
        cli.main(["dpo", "--batch-size", "-4", "--debug"])
    monkeypatch.setenv("MINIRLHF_DEBUG", "1")
    with pytest.raises(ConfigError):
        cli.main(["dpo", "--batch-size", "-4"])


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    """Only UserErrors become one line: anything else is a bug in minirlhf and must stay loud."""
    monkeypatch.chdir(tmp_path)
    cli._register_builtin()
    monkeypatch.setattr(cli.COMMANDS["sft"], "run", lambda args, cfg: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["sft", "--steps", "1"])


def test_user_error_says_where():
    assert str(UserError("not valid JSON", "data.jsonl: line 3")) == "not valid JSON (data.jsonl: line 3)"
    assert str(UserError("plain")) == "plain"


def test_threads_are_fixed_and_reported(monkeypatch):
    import torch

    monkeypatch.delenv("MINIRLHF_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        assert cli.set_determinism(None) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("MINIRLHF_THREADS", "2")
        assert cli.set_determinism(None) == 2 and torch.get_num_threads() == 2
        assert cli.set_determinism(1) == 1
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(before)


def test_the_installed_command_exits_1_with_one_line(tmp_path):
    """Through the real entry point (a new process): exit status 1, one line on stderr."""
    r = subprocess.run([sys.executable, "-m", "minirlhf", "grpo", "--group-size", "1"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == "error: --group-size must be >= 2, got 1 (minirlhf grpo)"
