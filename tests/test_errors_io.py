"""Faults at the edges: models that cannot be loaded, checkpoints that are missing, partial or
half-swapped, and metrics that must survive a kill. Every user-fixable case is one named error
(a UserError: one `error: ...` line from the command line), and no saved state is ever lost."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from minirlhf import checkpoint, models
from minirlhf.checkpoint import find_checkpoint, load_checkpoint, resume_from, save_checkpoint
from minirlhf.cli import main
from minirlhf.errors import CheckpointError, ModelLoadError
from minirlhf.models import ScalarHeadModel, check_same_vocab, is_local_path, load_model, load_tokenizer
from minirlhf.utils import MetricsLogger

ROOT = Path(__file__).resolve().parents[1]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def workdir(tmp_path, monkeypatch, tok, tiny_model):
    """A temporary working folder (runs/ goes there) with a saved tiny model, reward model and prefs."""
    monkeypatch.chdir(tmp_path)
    tiny_model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    ScalarHeadModel(tiny_model).save_pretrained(tmp_path / "tiny-rm")
    tok.save_pretrained(tmp_path / "tiny-rm")
    write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": f"q{i}", "chosen": " yes", "rejected": " no"} for i in range(4)])
    return tmp_path


def cli_error(capsys, argv) -> str:
    """Run the command line; it must stop with one `error: ...` line (exit code 1). Returns that line."""
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    return err[-1]


def no_hub(monkeypatch):
    """Fail the test if anything reaches from_pretrained (a local path must be checked first)."""
    def refuse(*a, **k):
        raise AssertionError("from_pretrained was called for a local path")

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", refuse)


def metric_steps(path) -> list:
    return [json.loads(line)["step"] for line in Path(path).read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# 6. Model loading says what is wrong, before any training, without asking the hub
# ---------------------------------------------------------------------------------------------


def test_hub_names_and_local_paths_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for hub in ("Qwen/Qwen2.5-0.5B", "gpt2", "org/my.model-v2"):
        assert not is_local_path(hub), hub
    for local in ("./model", "../m", "/abs/m", "~/m", "runs/sft/model", "runs/x", "a/b/c", tmp_path / "m"):
        assert is_local_path(local), local


def _bin_only(folder, model):
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")


@pytest.mark.parametrize("case,expected", [
    ("missing", "model folder not found: {p} (a local path: nothing is looked up on the hub)"),
    ("file", "{p} is a file, not a model folder: pass the folder that holds it"),
    ("no_config", "not a model folder: no config.json in {p}"),
    ("no_weights", "no weights: {p} has config.json but no model.safetensors (an interrupted save or copy?)"),
    ("bin_only", "{p} holds pytorch_model.bin but no model.safetensors: weights are loaded as safetensors only"),
])
def test_a_local_model_that_is_not_one_is_named(tmp_path, monkeypatch, tiny_model, case, expected):
    p = tmp_path / "model"
    if case == "file":
        p.write_text("not a model")
    elif case == "no_config":
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"")
    elif case == "no_weights":
        tiny_model.config.save_pretrained(p)
    elif case == "bin_only":
        p.mkdir()
        _bin_only(p, tiny_model)
    before = sorted(os.listdir(tmp_path))
    no_hub(monkeypatch)
    with pytest.raises(ModelLoadError) as e:
        load_model(str(p))
    assert str(e.value).startswith(expected.format(p=p)), str(e.value)
    assert sorted(os.listdir(tmp_path)) == before  # nothing written or removed


def test_the_safetensors_conversion_hint_works(tmp_path, tiny_model):
    p = tmp_path / "bin-model"
    p.mkdir()
    _bin_only(p, tiny_model)
    with pytest.raises(ModelLoadError) as e:
        load_model(str(p))
    command = re.search(r'python -c "(.*)"', str(e.value)).group(1)
    exec(command, {})  # what the user is told to run, once, for a model they trust
    loaded = load_model(str(p))
    assert torch.equal(loaded.model.embed_tokens.weight, tiny_model.model.embed_tokens.weight)


def test_missing_shard_of_a_sharded_model_is_named(tmp_path, tiny_model, monkeypatch):
    p = tmp_path / "sharded"
    tiny_model.save_pretrained(p)
    (p / "model.safetensors").rename(p / "model-00001-of-00002.safetensors")
    (p / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    no_hub(monkeypatch)
    with pytest.raises(ModelLoadError, match=re.escape(
            f"incomplete model folder: 1 of 2 weight shards are missing (model-00002-of-00002.safetensors) in {p}")):
        load_model(str(p))


def test_a_truncated_weights_file_is_a_model_load_error(tmp_path, tiny_model):
    p = tmp_path / "cut"
    tiny_model.save_pretrained(p)
    w = p / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match=re.escape(f"cannot load the model in {p}: ")):
        load_model(str(p))


def test_tokenizer_and_reward_model_folders_are_checked(tmp_path, tiny_model, monkeypatch):
    lm = tmp_path / "lm"
    tiny_model.save_pretrained(lm)  # a causal LM: no tokenizer files, no scalar head
    no_hub(monkeypatch)
    with pytest.raises(ModelLoadError, match=re.escape(
            f"no tokenizer in {lm} (no tokenizer.json or tokenizer_config.json): save it beside the model")):
        load_tokenizer(str(lm))
    with pytest.raises(ModelLoadError, match=re.escape(f"model folder not found: {tmp_path / 'nope'}")):
        load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match=re.escape(
            f"not a reward model folder: no scalar_head.safetensors in {lm} (a causal LM folder?")):
        ScalarHeadModel.from_pretrained(str(lm))
    with pytest.raises(ModelLoadError, match="model folder not found"):
        ScalarHeadModel.from_pretrained(str(tmp_path / "nope"))


def test_a_hub_name_that_cannot_be_fetched_is_named_with_the_offline_hint(monkeypatch):
    calls = []

    def offline(name, **kw):
        calls.append(name)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find "
                      "them in the cached files.\nCheck your internet connection ...")

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", offline)
    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", offline)
    for load, what in ((load_model, "model"), (load_tokenizer, "tokenizer")):
        with pytest.raises(ModelLoadError) as e:
            load("Qwen/Qwen2.5-0.5B")
        assert str(e.value) == (
            f"cannot load the {what} 'Qwen/Qwen2.5-0.5B' from the Hugging Face hub: We couldn't connect to "
            "'https://huggingface.co' to load the files, and couldn't find them in the cached files; offline "
            "there is no hub: pass a local folder, or a model already in the cache with HF_HUB_OFFLINE=1")
        assert isinstance(e.value, OSError)  # library callers may still `except OSError`
    assert calls == ["Qwen/Qwen2.5-0.5B"] * 2  # hub names still go to from_pretrained, once


def test_a_reward_model_of_another_vocabulary_is_refused(tok, tiny_model):
    from transformers import LlamaForCausalLM

    other = LlamaForCausalLM(models.tiny_llama_config(len(tok) + 8, hidden_size=32, num_layers=1, num_heads=2,
                                                      intermediate_size=64))
    check_same_vocab(ScalarHeadModel(tiny_model), tiny_model, "rm", "policy", tok)  # the same: fine
    with pytest.raises(ModelLoadError, match=re.escape(
            f"the reward model big-rm has a vocabulary of {len(tok) + 8} tokens but the policy tiny has "
            f"{len(tok)}: the reward model must use the policy's tokenizer")):
        check_same_vocab(ScalarHeadModel(other), tiny_model, "big-rm", "tiny", tok)


def test_ppo_refuses_a_reward_model_of_another_vocabulary_at_start(workdir, capsys, tok):
    from transformers import LlamaForCausalLM

    big = LlamaForCausalLM(models.tiny_llama_config(len(tok) + 8, hidden_size=32, num_layers=1, num_heads=2,
                                                    intermediate_size=64))
    ScalarHeadModel(big).save_pretrained(workdir / "big-rm")
    err = cli_error(capsys, ["ppo", "--model", str(workdir / "tiny"), "--reward-model", str(workdir / "big-rm"),
                             "--dataset", str(workdir / "prefs.jsonl"), "--steps", "1", "--batch-size", "4",
                             "--mini-batch-size", "2", "--max-new-tokens", "4", "--norm-samples", "4"])
    assert err == (f"error: the reward model {workdir / 'big-rm'} has a vocabulary of {len(tok) + 8} tokens but the "
                   f"policy {workdir / 'tiny'} has {len(tok)}: the reward model must use the policy's tokenizer")
    assert not (workdir / "runs").exists()  # refused before anything ran or was written


def test_cli_names_a_missing_model_folder(workdir, capsys):
    err = cli_error(capsys, ["dpo", "--model", "./runs/sft/modle", "--dataset", str(workdir / "prefs.jsonl")])
    assert err == "error: model folder not found: ./runs/sft/modle (a local path: nothing is looked up on the hub)"


# ---------------------------------------------------------------------------------------------
# 7. Checkpoints never lose the last good state
# ---------------------------------------------------------------------------------------------


def ckpt_cfg(path, resume=True):
    return SimpleNamespace(checkpoint_dir=str(path), checkpoint_every=1, resume=resume)


def snapshot(folder) -> dict:
    """Every file under `folder` and its bytes (to show that nothing on disk changed)."""
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(Path(folder).rglob("*")) if f.is_file()}


def save_at(path, model, step):
    """Save `model`, its weights set to tell the step apart (`holds`), as the checkpoint of `step`."""
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(step / 100)
    save_checkpoint(path, model, torch.optim.AdamW(model.parameters()), step, {"cursor": step})


def holds(model, step) -> bool:
    """True when `model` holds the weights `save_at(..., step)` saved."""
    return all(torch.equal(p, torch.full_like(p, step / 100)) for p in model.parameters())


def test_resume_with_no_checkpoint_is_an_error_not_a_fresh_start(workdir, capsys):
    ckpt = workdir / "runs/x/ckpt"
    err = cli_error(capsys, ["dpo", "--model", str(workdir / "tiny"), "--dataset", str(workdir / "prefs.jsonl"),
                             "--checkpoint-dir", "runs/x/ckpt", "--resume", "--steps", "2", "--name", "x"])
    assert err == "error: --resume: no checkpoint in runs/x/ckpt (nothing to resume); drop --resume to start fresh"
    assert not ckpt.exists()
    ckpt.mkdir(parents=True)  # an empty folder is no checkpoint either
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        resume_from(ckpt_cfg(ckpt), torch.nn.Linear(2, 2), None)


@pytest.mark.parametrize("damage,message", [
    ("delete trainer_state.pt", "incomplete checkpoint: {ckpt}/trainer_state.pt is missing; it was left as it is: "
                                "restore it, or move {ckpt} away and start without --resume"),
    ("delete model.safetensors", "incomplete checkpoint: {ckpt}/model.safetensors is missing; it was left as it is"),
    ("truncate trainer_state.pt", "corrupt checkpoint: {ckpt}/trainer_state.pt cannot be read (PytorchStreamReader "
                                  "failed reading zip archive"),
    ("truncate model.safetensors", "corrupt checkpoint: {ckpt}/model.safetensors cannot be read (Error while "
                                   "deserializing header"),
])
def test_a_partial_checkpoint_is_named_and_left_untouched(tmp_path, tiny_model, damage, message):
    ckpt = tmp_path / "ckpt"
    save_at(ckpt, tiny_model, 3)
    action, name = damage.split()
    if action == "delete":
        (ckpt / name).unlink()
    else:
        (ckpt / name).write_bytes((ckpt / name).read_bytes()[:200])
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError) as e:
        resume_from(ckpt_cfg(ckpt), tiny_model, torch.optim.AdamW(tiny_model.parameters()))
    assert str(e.value).startswith(message.format(ckpt=ckpt)), str(e.value)
    assert snapshot(tmp_path) == before  # nothing restarted, nothing overwritten


def test_a_checkpoint_of_another_model_is_refused(tmp_path, tiny_model):
    save_at(tmp_path / "ckpt", torch.nn.Linear(3, 3), 2)
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {tmp_path / 'ckpt'} does not match this run's "
                                                        "model (Missing key(s) in state_dict")):
        load_checkpoint(tmp_path / "ckpt", tiny_model)


def test_stale_temporary_folders_go_at_the_next_save_and_resume(tmp_path, tiny_model):
    ckpt = tmp_path / "ckpt"
    for stale in (".ckpt-abcd1234", ".ckpt-x_y9zz00"):  # as a kill during a save leaves them
        (tmp_path / stale).mkdir()
        (tmp_path / stale / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".ckpt-2-abcd1234").mkdir()  # another checkpoint's temporary folder: not ours
    save_at(ckpt, tiny_model, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ckpt-2-abcd1234", "ckpt"]
    (tmp_path / ".ckpt-qqqq1111").mkdir()
    assert resume_from(ckpt_cfg(ckpt), tiny_model, None)[0] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ckpt-2-abcd1234", "ckpt"]


def test_an_interrupted_write_leaves_no_temporary_folder(tmp_path, tiny_model, monkeypatch):
    ckpt = tmp_path / "ckpt"
    save_at(ckpt, tiny_model, 1)

    def killed(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(checkpoint.torch, "save", killed)
        save_at(ckpt, tiny_model, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert load_checkpoint(ckpt, tiny_model)[0] == 1 and holds(tiny_model, 1)


class Crash(Exception):
    pass


def crash_at(m, target, name: str, n: int):
    """Make `target.name` (os.replace or shutil.rmtree) raise Crash at its n-th call: a kill there.
    `m`: a monkeypatch context, which puts the real one back."""
    real, count = getattr(target, name), [0]

    def fake(*a, **k):
        count[0] += 1
        if count[0] == n:
            raise Crash(f"{name} call {n}")
        return real(*a, **k)

    m.setattr(target, name, fake)


# a save over an existing checkpoint calls: os.replace(path, path.old), os.replace(tmp, path), rmtree(path.old)
@pytest.mark.parametrize("call,n,restored", [
    ("replace", 1, 3),  # before anything moved: the old checkpoint is in place
    ("replace", 2, 3),  # between the two renames: only ckpt.old is there, and resume finds it
    ("rmtree", 1, 6),   # the new checkpoint is in place, the old one not yet deleted
])
def test_a_crash_at_each_point_of_the_swap_keeps_the_last_good_checkpoint(tmp_path, tiny_model, monkeypatch,
                                                                         call, n, restored):
    ckpt = tmp_path / "ckpt"
    save_at(ckpt, tiny_model, 3)
    target, name = (os, "replace") if call == "replace" else (shutil, "rmtree")
    with monkeypatch.context() as m, pytest.raises(Crash):
        crash_at(m, target, name, n)
        save_at(ckpt, tiny_model, 6)
    # a new process resumes: from fresh weights, to the last complete checkpoint
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.zero_()
    step, extra = resume_from(ckpt_cfg(ckpt), tiny_model, torch.optim.AdamW(tiny_model.parameters()))
    assert (step, extra["cursor"]) == (restored, restored)
    assert holds(tiny_model, restored)
    # and the next save cleans up: one checkpoint, no .old, no temporary folder
    save_at(ckpt, tiny_model, 9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert load_checkpoint(ckpt, tiny_model)[0] == 9


def test_a_second_crash_while_only_the_old_checkpoint_is_there(tmp_path, tiny_model, monkeypatch):
    ckpt = tmp_path / "ckpt"
    save_at(ckpt, tiny_model, 3)
    with monkeypatch.context() as m, pytest.raises(Crash):
        crash_at(m, os, "replace", 2)  # kill between the renames: ckpt.old only
        save_at(ckpt, tiny_model, 6)
    assert find_checkpoint(ckpt) == tmp_path / "ckpt.old"
    with monkeypatch.context() as m, pytest.raises(Crash):
        crash_at(m, os, "replace", 1)  # the next save is killed too, before its rename
        save_at(ckpt, tiny_model, 9)
    assert resume_from(ckpt_cfg(ckpt), tiny_model, None)[0] == 3 and holds(tiny_model, 3)


# ---------------------------------------------------------------------------------------------
# 7e. Metrics are written as the run goes
# ---------------------------------------------------------------------------------------------


def test_metrics_logger_appends_each_row_at_once(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text('{"step": 0, "loss": 9}\n')  # an earlier run of the same name
    log = MetricsLogger(path)  # a fresh run empties it
    assert path.read_text() == ""
    log.log({"step": 0, "loss": torch.tensor(1.5)})
    log.log({"step": 1, "loss": float("nan")})
    assert path.read_text() == '{"step": 0, "loss": 1.5}\n{"step": 1, "loss": null}\n'  # no close needed
    # a resumed run continues the file, and drops the steps it does again (and a line cut by a kill)
    with open(path, "a") as f:
        f.write('{"step": 2, "loss": 0.9}\n{"step": 3, "lo')
    resumed = MetricsLogger(path, resume=True)
    resumed.drop_from_step(2)
    resumed.log({"step": 2, "loss": 0.8})
    assert metric_steps(path) == [0, 1, 2] and json.loads(path.read_text().splitlines()[-1])["loss"] == 0.8
    assert MetricsLogger.load(path).series("step") == [0, 1, 2]


def test_only_rank_0_writes_metrics(tmp_path, monkeypatch):
    import minirlhf.utils

    monkeypatch.setattr(minirlhf.utils, "dist_info", lambda: (1, 2))
    log = MetricsLogger(tmp_path / "m" / "metrics.jsonl")
    log.log({"step": 0})
    assert log.rows == [{"step": 0}] and not (tmp_path / "m").exists()


DPO_ARGS = ["dpo", "--dataset", "prefs.jsonl", "--batch-size", "2", "--log-every", "1",
            "--checkpoint-dir", "ckpt", "--checkpoint-every", "3", "--name", "d"]


def test_a_run_stopped_by_nan_keeps_its_log_and_last_checkpoint(workdir, capsys, monkeypatch):
    import minirlhf.dpo

    real, calls = minirlhf.dpo.preference_loss, [0]

    def nan_at_step_7(*a, **k):
        loss, metrics = real(*a, **k)
        calls[0] += 1
        return (loss * float("nan") if calls[0] == 8 else loss), metrics

    argv = DPO_ARGS + ["--model", str(workdir / "tiny"), "--steps", "10"]
    with monkeypatch.context() as m:
        m.setattr(minirlhf.dpo, "preference_loss", nan_at_step_7)
        err = cli_error(capsys, argv)
    assert err == ("error: dpo loss is not finite (1 of 1 values are NaN/inf); the step was stopped before "
                   "updating the weights")
    assert metric_steps(workdir / "runs/d/metrics.jsonl") == list(range(7))  # every row before the NaN
    assert load_checkpoint(workdir / "ckpt", load_model(str(workdir / "tiny")))[0] == 6
    # the same command with --resume continues from step 6; the file holds each step once
    assert main(argv + ["--resume"]) == 0
    assert metric_steps(workdir / "runs/d/metrics.jsonl") == list(range(10))


def test_a_killed_cli_run_keeps_its_metrics_and_a_loadable_checkpoint(workdir, tiny_model):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    argv = DPO_ARGS + ["--model", str(workdir / "tiny"), "--steps", "100000"]
    stderr = open(workdir / "stderr.txt", "w")
    proc = subprocess.Popen([sys.executable, "-m", "minirlhf", *argv], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=stderr)
    metrics = workdir / "runs/d/metrics.jsonl"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 8:
                break
            time.sleep(0.2)
        assert proc.poll() is None, (workdir / "stderr.txt").read_text()[-2000:]
        proc.send_signal(signal.SIGKILL)  # no cleanup of any kind
    finally:
        proc.kill()
        proc.wait()
        stderr.close()
    steps = [r["step"] for r in MetricsLogger.load(metrics).rows]
    assert len(steps) >= 8 and steps == list(range(len(steps)))  # every row logged before the kill
    step, _ = load_checkpoint(find_checkpoint(workdir / "ckpt"), tiny_model)
    # saved after step S-1's update, before its row; the next save (S + 3) had not finished
    assert step % 3 == 0 and len(steps) - 3 <= step <= len(steps) + 1
    # resuming drops the rows after the checkpoint (done again) and any line the kill cut short
    assert main(argv[:-1] + [str(step + 2), "--resume"]) == 0
    assert metric_steps(metrics) == list(range(step + 2))
    assert not [p for p in workdir.iterdir() if p.name.startswith(".ckpt-")]
