"""Live feedback and tracking: the progress bar and sample tables of the trainers (progress.py),
--quiet, and the TensorBoard / W&B writers (tracking.py) read back from their own files."""

import json
import sys
import types
import warnings

import pytest
import torch

from minirlhf import dpo, grpo, ppo, rft, sft
from minirlhf.cli import main
from minirlhf.errors import ConfigError
from minirlhf.zoo import new_tiny_model
from minirlhf.progress import ProgressBar, postfix_text, sample_table
from minirlhf.tracking import TensorBoardWriter, WandbWriter, parse_report_to, scalars, tag
from minirlhf.utils import MetricsLogger

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PAIRS = [{"prompt": "the film was", "chosen": " great .", "rejected": " dull and slow ."},
         {"prompt": "it is", "chosen": " very good .", "rejected": " bad ."},
         {"prompt": "the plot felt", "chosen": " fine .", "rejected": " awful ."},
         {"prompt": "the music was", "chosen": " fun .", "rejected": " loud ."}]
PROMPTS = ["3 +4 *2\n", "5 -1\n", "7 *3 +2 -1\n", "0 +9\n"]


def tiny(tok, seed=0):
    torch.manual_seed(seed)
    return new_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def length_reward(prompts, completions):
    return [len(c) / 10 for c in completions]


# ---------------------------------------------------------------------------------------------
# the pieces: postfix, sample table, the bar following a logger
# ---------------------------------------------------------------------------------------------


def test_postfix_shows_the_chosen_keys_in_order_with_3_significant_digits():
    values = {"objective/kl": 0.123456, "objective/scores": -2.0, "ignored": 5.0, "eval/gold": None}
    keys = {"objective/scores": "score", "objective/kl": "kl", "eval/gold": "gold", "missing": "m"}
    assert postfix_text(values, keys) == "score=-2, kl=0.123"


def test_sample_table_is_short_aligned_and_one_line_per_sample():
    text = sample_table({"prompt": ["2+3=", "a\nb", "x", "y"], "completion": ["5", "c" * 50, "z", "w"],
                         "reward": [1.0, 0.25, 0.0, 3.0]})
    lines = text.splitlines()
    assert lines == ["prompt | completion                           | reward",
                     "2+3=   | 5                                    | 1",
                     "a\\nb   | " + "c" * 33 + "... | 0.25",
                     "x      | z                                    | 0"]  # at most 3 rows; newlines shown as \n


def test_bar_follows_the_logger_and_detaches_after_the_loop(capfd):
    log = MetricsLogger()
    bar = ProgressBar(range(3), "demo", {"loss": "loss", "eval/gold": "gold"}, log, enabled=True)
    for step in bar:
        log.log({"step": step, "loss": 1.0 / (step + 1)})
    log.log({"step": 9, "loss": 7.0})  # after the loop: no longer shown
    assert log.listeners == [] and bar.values == {"loss": pytest.approx(1 / 3)}
    err = capfd.readouterr().err
    assert "demo: 100%" in err and "3/3" in err and "loss=0.333" in err


def test_disabled_bar_yields_the_same_steps_and_prints_nothing(capfd):
    log = MetricsLogger()
    bar = ProgressBar(range(2, 5), "demo", {"loss": "loss"}, log, enabled=False)
    assert list(bar) == [2, 3, 4] and log.listeners == []
    bar.samples({"prompt": ["a"]})
    assert capfd.readouterr() == ("", "")


# ---------------------------------------------------------------------------------------------
# each trainer: the bar and the samples appear with progress=True, nothing without it
# ---------------------------------------------------------------------------------------------


def run_sft(tok, progress):
    rows = [{"prompt": p, "completion": "#### 1"} for p in PROMPTS]
    return sft.train_sft(tiny(tok), tok, rows, sft.SFTConfig(steps=2, batch_size=2, log_every=1), progress=progress)


def run_dpo(tok, progress):
    return dpo.train_dpo(tiny(tok), tok, PAIRS, dpo.DPOConfig(steps=2, batch_size=2, log_every=1), progress=progress)


def run_grpo(tok, progress):
    cfg = grpo.preset("grpo", steps=2, prompts_per_step=2, group_size=3, max_new_tokens=6, eval_every=0)
    with warnings.catch_warnings():  # "completions were cut at --max-new-tokens": true, and not what is tested
        warnings.simplefilter("ignore")
        return grpo.train_grpo(tiny(tok), tok, PROMPTS, length_reward, cfg, progress=progress)


def run_ppo(tok, progress):
    cfg = ppo.PPOConfig(steps=2, batch_size=4, mini_batch_size=2, max_new_tokens=6, norm_samples=4, eval_every=0)
    return ppo.train_ppo(tiny(tok), tok, PROMPTS, length_reward, cfg, gold_fn=length_reward, progress=progress)[0]


def run_rft(tok, progress):
    cfg = rft.RFTConfig(iterations=1, prompts_per_iteration=2, samples_per_prompt=2, max_new_tokens=6, sft_steps=1,
                        batch_size=2, correct_threshold=0.0)
    return rft.train_rft(tiny(tok), tok, PROMPTS, length_reward, cfg, progress=progress)


TRAINERS = {  # what each shows: its bar's label and postfix, and its sample table's columns
    "sft": (run_sft, "sft: 100%", "loss=", ["prompt", "completion", "gold"]),
    "dpo": (run_dpo, "dpo: 100%", "margin=", ["prompt", "chosen", "rejected", "r(chosen)", "r(rejected)"]),
    "grpo": (run_grpo, "grpo: 100%", "reward=", ["prompt", "completion", "reward", "advantage"]),
    "ppo": (run_ppo, "ppo: 100%", "kl=", ["prompt", "completion", "score", "gold"]),
    "rft": (run_rft, "rft: 100%", "acc=", ["prompt", "kept completion"]),
}


def table_headers(err: str, columns: list[str]) -> int:
    """How many lines of `err` are a sample table's header with exactly these columns."""
    return sum([c.strip() for c in line.split("|")] == columns for line in err.splitlines())


@pytest.mark.parametrize("name", list(TRAINERS))
def test_trainer_shows_a_bar_and_samples_and_is_silent_without_progress(tok, capfd, name):
    run, bar, postfix, columns = TRAINERS[name]
    quiet_log = run(tok, progress=False)
    assert capfd.readouterr().err == ""
    loud_log = run(tok, progress=True)
    err = capfd.readouterr().err
    assert bar in err and postfix in err, err
    assert table_headers(err, columns) == 1, err  # eval_every 0: one table, at the end
    assert f"{name} step {2 if name == 'grpo' else 1}\n" in err, err  # its title names the last step (GRPO counts from 1)
    # showing progress changes nothing: the same seed logs the same numbers
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(loud_log.rows) == strip(quiet_log.rows)
    assert loud_log.listeners == []


def test_dpo_reference_precomputation_shows_its_progress(tok, capfd):
    out = dpo.precompute_reference_logps(tiny(tok), tok, PAIRS, batch_size=2, progress=True)
    assert len(out) == 4 and "dpo reference log-probs: 100%" in capfd.readouterr().err


# ---------------------------------------------------------------------------------------------
# the command line: --quiet, --report-to
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path, monkeypatch, tok):
    monkeypatch.chdir(tmp_path)  # runs/ goes here
    model = tiny(tok)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    rows = [{"prompt": p, "completion": " #### 1"} for p in PROMPTS]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def sft_argv(workdir, *extra):
    return ["sft", "--model", str(workdir / "tiny"), "--dataset", str(workdir / "sft.jsonl"), "--steps", "3",
            "--batch-size", "2", "--log-every", "1", "--name", "t", *extra]


def test_cli_shows_progress_and_quiet_silences_it(workdir, capfd):
    assert main(sft_argv(workdir)) == 0
    out, err = capfd.readouterr()
    assert "sft: 100%" in err and table_headers(err, ["prompt", "completion", "gold"]) == 1
    assert json.loads(out[out.index("{"):])["steps"] == 3  # stdout stays the JSON summary
    assert main(sft_argv(workdir, "--quiet")) == 0
    out, err = capfd.readouterr()
    assert err == "" and json.loads(out[out.index("{"):])["steps"] == 3


def read_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(folder.glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    acc = EventAccumulator(str(files[0]))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_tensorboard_events_round_trip_with_trl_names(tmp_path):
    pytest.importorskip("tensorboard")  # in the dev extra; tracking.parse_report_to names the install
    log = MetricsLogger()
    log.listeners.append(TensorBoardWriter(tmp_path / "tb"))
    log.log({"step": 0, "loss": 0.5, "objective/kl": 0.25, "time": 3.0})
    log.log({"step": 1, "loss": 0.125, "objective/kl": float("nan")})
    log.log({"step": 1, "eval/gold": -1.5, "test_accuracy": 0.75, "note": "text"})
    log.close()
    assert read_events(tmp_path / "tb") == {"train/loss": [(0, 0.5), (1, 0.125)], "train/objective/kl": [(0, 0.25)],
                                            "eval/gold": [(1, -1.5)], "test/accuracy": [(1, 0.75)]}


def test_cli_report_to_tensorboard_writes_the_metrics_jsonl_rows(workdir, capfd):
    pytest.importorskip("tensorboard")
    assert main(sft_argv(workdir, "--quiet", "--report-to", "tensorboard")) == 0
    rows = [json.loads(line) for line in (workdir / "runs/t/metrics.jsonl").read_text().splitlines()]
    events = read_events(workdir / "runs/t/tensorboard")
    assert events["train/loss"] == [(r["step"], pytest.approx(r["loss"])) for r in rows if "loss" in r]
    assert len(events["train/loss"]) == 3 and "train/lr" in events and "train/time" not in events
    # a fresh run of the same name replaces the events, as it replaces metrics.jsonl
    assert main(sft_argv(workdir, "--quiet", "--report-to", "tensorboard", "--steps", "1")) == 0
    assert len(read_events(workdir / "runs/t/tensorboard")["train/loss"]) == 1


def test_tags_follow_the_hugging_face_trainer():
    assert [tag(k) for k in ("loss", "objective/kl", "eval/gold", "eval_loss", "test_accuracy", "train/x")] == [
        "train/loss", "train/objective/kl", "eval/gold", "eval/loss", "test/accuracy", "train/x"]
    row = {"iteration": 4, "reward": 1, "kl": float("inf"), "ok": True, "time": 2.0}
    assert scalars(row) == (4, {"train/reward": 1.0})  # x axis, finite numbers only, no timing


def test_report_to_names_and_missing_packages_are_one_line_errors(workdir, capfd, monkeypatch):
    assert parse_report_to(None) == [] and parse_report_to("none") == []
    with pytest.raises(ConfigError, match="unknown 'mlflow'"):
        parse_report_to("tensorboard,mlflow")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main(sft_argv(workdir, "--report-to", "tensorboard")) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "pip install tensorboard" in err and "--report-to tensorboard" in err
    assert not (workdir / "runs/t").exists()  # stopped before anything ran
    assert main(sft_argv(workdir, "--report-to", "wandb")) == 1
    assert "pip install wandb" in capfd.readouterr().err


def test_wandb_writer_logs_offline_against_the_global_step(tmp_path, monkeypatch):
    calls = {"log": [], "define": []}

    class Run:
        def define_metric(self, name, **kw):
            calls["define"].append((name, kw))

        def log(self, values):
            calls["log"].append(values)

        def finish(self):
            calls["finished"] = True

    def init(**kw):
        calls["init"] = kw
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    log = MetricsLogger()
    log.listeners.append(WandbWriter(tmp_path, "run1", {"beta": 0.1}))
    log.log({"step": 3, "objective/kl": 0.5})
    log.close()
    assert calls["init"]["mode"] == "offline" and calls["init"]["config"] == {"beta": 0.1}
    assert calls["log"] == [{"train/objective/kl": 0.5, "train/global_step": 3}] and calls["finished"]
    assert ("*", {"step_metric": "train/global_step", "step_sync": True}) in calls["define"]
