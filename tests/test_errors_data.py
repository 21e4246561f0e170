"""Every data problem is one clear DataError naming file, row (or line) and field, raised when the
file is read, before any model is loaded; `drop_invalid` drops and counts the bad rows instead.

Also: characters the tokenizer does not know, gold answers that do not parse, GRPO runs that cannot
learn (flat rewards, cut completions), and completions that already end with EOS."""

import argparse
import json
import warnings
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from minirlhf import commands
from minirlhf.cli import main
from minirlhf.data import (DataWarning, load_completions, load_preferences, load_prompts_with_answers, read_rows)
from minirlhf.dpo import DPOConfig
from minirlhf.errors import ConfigError, DataError, DataFileNotFound, UserError
from minirlhf.grpo import GRPOConfig, early_rollout_warnings, format_reward, train_grpo
from minirlhf.lm import encode_pairs
from minirlhf.tokenizer import build_char_tokenizer
from minirlhf.worlds import arithmetic
from minirlhf.worlds.arithmetic import extract_numeric_answer, numeric_answer_reward
from minirlhf.zoo import new_tiny_model

ROOT = Path(__file__).resolve().parents[1]
GSM8K_FILES = (sorted((ROOT / "data" / "gsm8k").glob("*.jsonl"))  # shipped, and the shared copy where there is one
               + sorted((ROOT.parent / "shared" / "data").glob("gsm8k*.jsonl")))
PAIR = {"prompt": "the film was", "chosen": " great .", "rejected": " bad ."}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def one_line(e: pytest.ExceptionInfo) -> str:
    """The message the command line prints: one line, and a UserError."""
    assert isinstance(e.value, UserError)
    assert "\n" not in str(e.value)
    return str(e.value)


# --------------------------------------------------------------------------- files that cannot be data


def test_missing_path_is_data_file_not_found(tmp_path):
    with pytest.raises(DataFileNotFound) as e:
        load_preferences(tmp_path / "nope.jsonl")
    assert isinstance(e.value, FileNotFoundError)
    assert one_line(e) == f"{tmp_path / 'nope.jsonl'}: no such file"


def test_directory_is_named(tmp_path):
    (tmp_path / "prefs.jsonl").mkdir()
    with pytest.raises(DataError) as e:
        load_preferences(tmp_path / "prefs.jsonl")
    assert one_line(e).endswith("prefs.jsonl is a directory, expected a .json, .jsonl or .parquet file")


@pytest.mark.parametrize("name", ["prefs.jsonl", "prefs.json", "prefs.parquet"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataError) as e:
        load_preferences(tmp_path / name)
    assert one_line(e).endswith(f"{name} is empty (0 bytes)")


@pytest.mark.parametrize("name", ["prefs.jsonl", "prefs.json", "prefs.parquet"])
def test_whitespace_only_file(tmp_path, name):
    (tmp_path / name).write_text("\n  \n\t\n")
    with pytest.raises(DataError) as e:
        load_preferences(tmp_path / name)
    assert one_line(e).endswith(f"{name} holds only whitespace, no rows")


def test_jsonl_line_that_is_not_json_names_the_line(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(PAIR) + "\n\n" + '{"prompt": "a", "chosen": " b",\n' + json.dumps(PAIR) + "\n")
    with pytest.raises(DataError) as e:
        load_preferences(path)
    # line 3 of the file (the blank line 2 is not a row), row 1
    assert one_line(e) == f"{path}: line 3 (row 1) is not valid JSON: Expecting property name enclosed in " \
                          "double quotes at column 32"
    report = {}
    with pytest.warns(DataWarning, match="dropped 1 of 3 invalid rows; first: .*line 3 \\(row 1\\)"):
        rows = load_preferences(path, drop_invalid=True, report=report)
    assert rows == [PAIR, PAIR] and report["n_dropped"] == 1 and report["n_rows"] == 3


def test_json_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "prefs.json"
    path.write_text('[\n  {"prompt": "a", "chosen": " b", "rejected": " c"},\n  {"prompt": "a" "chosen": " b"}\n]')
    with pytest.raises(DataError) as e:
        load_preferences(path)
    assert one_line(e) == f"{path}: not valid JSON at line 3, column 18: Expecting ',' delimiter"


@pytest.mark.parametrize("text, what", [
    ('{"data": [{"prompt": "a", "chosen": " b", "rejected": " c"}]}',
     "a JSON dict with keys ['data'] (are the rows the list under 'data'?)"),
    ('{\n  "prompt": "a",\n  "chosen": " b",\n  "rejected": " c"\n}\n',
     "a JSON dict with keys ['prompt', 'chosen', 'rejected']"),
    ('"just a string"', None),
])
def test_json_top_level_that_is_not_a_list_of_rows(tmp_path, text, what):
    path = tmp_path / "prefs.json"
    path.write_text(text)
    with pytest.raises(DataError) as e:
        load_preferences(path)
    if what is None:  # one line that is a string: a row that is not an object
        assert one_line(e).endswith("prefs.json: row 0 is a str, expected a dict (a JSON object such as "
                                    '{"prompt": ..., ...})')
    else:
        assert one_line(e) == (f"{path}: the top level is {what}, expected a list of row objects ([{{...}}, ...]) "
                               "or JSON Lines (one object a line)")


@pytest.mark.parametrize("name", ["prefs.json", "prefs.jsonl"])
def test_row_that_is_a_list_instead_of_an_object(tmp_path, name):
    path = tmp_path / name
    rows = [PAIR, ["the film was", " great .", " bad ."], PAIR]
    path.write_text(json.dumps(rows) if name.endswith(".json") else "\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError) as e:
        load_preferences(path)
    assert one_line(e) == f'{path}: row 1 is a list, expected a dict (a JSON object such as {{"prompt": ..., ...}})'
    report = {}
    with pytest.warns(DataWarning):
        assert load_preferences(path, drop_invalid=True, report=report) == [PAIR, PAIR]
    assert report["n_dropped"] == 1


@pytest.mark.parametrize("name", ["hh.jsonl", "hh.parquet"])
def test_git_lfs_pointer(tmp_path, name):
    (tmp_path / name).write_text("version https://git-lfs.github.com/spec/v1\n"
                                 "oid sha256:4d7a2146\nsize 13090000\n")
    with pytest.raises(DataError) as e:
        load_preferences(tmp_path / name)
    assert one_line(e) == f"{tmp_path / name} is a Git LFS pointer, not the data: fetch the file itself (git lfs pull)"


def test_csv_named_parquet(tmp_path):
    path = tmp_path / "prefs.parquet"
    path.write_text("prompt,chosen,rejected\nthe film was, great ., bad .\n")
    with pytest.raises(DataError) as e:
        load_preferences(path)
    assert one_line(e) == (f"{path} is not a Parquet file (no b'PAR1' magic bytes; it starts with "
                           "b'prompt,chosen,reject'): a CSV or JSON file named .parquet?")


def test_truncated_parquet(tmp_path):
    from datasets import Dataset

    path = tmp_path / "prefs.parquet"
    Dataset.from_list([PAIR] * 3).to_parquet(str(path))
    assert read_rows(path) == [PAIR] * 3
    path.write_bytes(path.read_bytes()[:-10])  # the footer is gone
    with pytest.raises(DataError, match="is not a Parquet file"):
        load_preferences(path)


def test_no_rows_and_no_valid_rows(tmp_path):
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DataError) as e:
        load_preferences(tmp_path / "empty.json")
    assert one_line(e) == f"{tmp_path / 'empty.json'} holds no rows"
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    with pytest.raises(DataError) as e:
        load_preferences(path, drop_invalid=True)
    assert one_line(e) == f"{path}: all 2 rows are invalid; first: {path}: row 0, field 'chosen': missing"


# --------------------------------------------------------------------------- rows over max_length, at load time


def test_over_long_preference_row_named_by_file_row_and_field(tmp_path, tok):
    long = {"prompt": "ab", "chosen": " c", "rejected": " " + "x" * 20}
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "a"}, PAIR, long])
    with pytest.raises(DataError) as e:
        load_preferences(path, tok, max_length=16, drop_invalid=False)
    assert "row 0, field 'chosen': missing" in str(e.value)  # the first bad row in the file comes first
    with pytest.warns(DataWarning, match="dropped 2 of 3"):
        report = {}
        assert load_preferences(path, tok, max_length=23, drop_invalid=True, report=report) == [PAIR]
    # the row number is the file's (2), although row 0 was dropped before it
    assert report["errors"][1] == (f"{path}: row 2, field 'rejected': prompt + rejected + EOS is 24 tokens, "
                                   "longer than max_length=23 (--max-length)")
    with pytest.warns(DataWarning, match="dropped 1 of 3"):
        assert len(load_preferences(path, tok, max_length=24, drop_invalid=True)) == 2


def test_over_long_sft_row_names_the_files_field(tmp_path, tok):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"question": "2+2?", "answer": "4"},
                                                {"question": "3+3?", "answer": "6" * 30}])
    with pytest.raises(DataError) as e:
        load_completions(path, tok, max_length=20, prompt_field="question", completion_field="answer")
    assert one_line(e) == (f"{path}: row 1, field 'answer': prompt + completion + EOS is 35 tokens, longer than "
                           "max_length=20 (--max-length)")


def tokenizer_only(tmp_path, tok) -> str:
    """A folder with a tokenizer and no model: a runner that loads the model first fails on it."""
    tok.save_pretrained(tmp_path / "tok-only")
    return str(tmp_path / "tok-only")


def run_args(**kw) -> argparse.Namespace:
    defaults = dict(model=None, dataset=None, drop_invalid=False, strict_vocab=False, trust_remote_code=False,
                    device="cpu", name=None, given_fields=[], prompt_field=None, answer_field="answer",
                    reward="answer", eval_every=0, preset=None)
    return argparse.Namespace(**{**defaults, **kw})


def test_dpo_runner_checks_rows_before_loading_the_model(tmp_path, tok):
    path = write_jsonl(tmp_path / "hh.jsonl", [PAIR, {**PAIR, "chosen": " " + "y" * 40}])
    with pytest.raises(DataError) as e:  # the model folder holds no model: the data error came first
        commands.run_dpo(run_args(model=tokenizer_only(tmp_path, tok), dataset=str(path)), DPOConfig(max_length=32))
    assert one_line(e) == (f"{path}: row 1, field 'chosen': prompt + chosen + EOS is 54 tokens, longer than "
                           "max_length=32 (--max-length)")


# --------------------------------------------------------------------------- GRPO on a file


GSM_ROWS = [{"question": "Tom has 2 apples and buys 3. How many?", "answer": "2+3=5\n#### 5"},
            {"question": "Ann has 4 pens and loses 1. How many?", "answer": "4-1=3\n#### 3"},
            {"question": "How many legs has a cat?", "answer": "four legs"}]


def test_grpo_rows_with_answers_unparseable_gold_is_a_bad_row(tmp_path, tok):
    path = write_jsonl(tmp_path / "gsm.jsonl", GSM_ROWS)
    with pytest.raises(DataError) as e:
        load_prompts_with_answers(path, tok)
    assert one_line(e) == (f"{path}: row 2, field 'answer': no final answer in 'four legs'; expected '#### <number>', "
                           "'\\boxed{<number>}', 'The answer is <number>' or a number")
    report = {}
    with pytest.warns(DataWarning, match="dropped 1 of 3 invalid rows"):
        rows = load_prompts_with_answers(path, tok, drop_invalid=True, report=report)
    assert [r["gold"] for r in rows] == [5, 3] and rows[0]["prompt"] == GSM_ROWS[0]["question"]


def test_grpo_rows_field_flags_and_conflicting_answers(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"text": "1+1?", "label": 2}, {"text": "2+2?", "label": "4.0"},
                                               {"text": "1+1?", "label": "3"}])
    with pytest.raises(DataError) as e:
        load_prompts_with_answers(path)
    assert one_line(e) == (f"{path}: row 0, field 'prompt': missing (and no 'question'; --prompt-field names "
                           "another field)")
    with pytest.raises(DataError) as e:
        load_prompts_with_answers(path, prompt_field="text", answer_field="label")
    assert one_line(e) == f"{path}: row 2, field 'label': answer 3, but row 0 has the same prompt with answer 2"


def test_grpo_runner_checks_rows_and_prompts_per_step_before_the_model(tmp_path, tok):
    path = write_jsonl(tmp_path / "gsm.jsonl", GSM_ROWS)
    model = tokenizer_only(tmp_path, tok)
    with pytest.raises(DataError, match="row 2, field 'answer': no final answer"):
        commands.run_grpo(run_args(model=model, dataset=str(path)), GRPOConfig())
    with pytest.raises(ConfigError) as e:
        commands.run_grpo(run_args(model=model, dataset=str(path), drop_invalid=True), GRPOConfig())
    assert one_line(e) == (f"--prompts-per-step 16 is more than the 2 distinct prompts in {path}: "
                           "lower --prompts-per-step to at most 2, or add rows")


def test_grpo_cli_drops_bad_rows_and_counts_them_in_the_summary(tmp_path, monkeypatch, capsys, tok, tiny_model):
    monkeypatch.chdir(tmp_path)
    tiny_model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    path = write_jsonl(tmp_path / "gsm.jsonl", GSM_ROWS)
    assert main(["grpo", "--model", str(tmp_path / "tiny"), "--dataset", str(path), "--drop-invalid", "--steps", "1",
                 "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "4"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out[out.index("{"):])
    assert summary["dataset_rows"] == 3 and summary["dropped_rows"] == 1
    assert json.loads((tmp_path / "runs/grpo/summary.json").read_text())["dropped_rows"] == 1
    assert f"[data] {path}: dropped 1 of 3 invalid rows; first: {path}: row 2, field 'answer'" in err


# --------------------------------------------------------------------------- answers and rewards on real data


@pytest.mark.parametrize("text, value", [
    ("so $1,234 in all\n#### $1,234", 1234), ("#### 12.00", 12), ("#### -3", -3), ("#### 2,125", 2125),
    ("The area is \\boxed{12}.", 12), ("\\boxed{\\$-4.50}", Fraction(-9, 2)), ("The answer is 12.", 12),
    ("so the answer is: **-$5**", -5), ("42", 42), ("#### 5\nwait, #### 7", 7), ("#### .5", Fraction(1, 2)),
    ("Final answer: 3", 3), ("no answer here", None), ("3+4=7\n7*2=4", None), ("#### x", None), ("", None),
])
def test_extract_numeric_answer_accepts_what_models_write(text, value):
    assert extract_numeric_answer(text) == value


def test_builtin_extract_answer_unchanged():
    assert arithmetic.extract_answer("3+4=7\n#### 7") == "7"
    assert arithmetic.extract_answer("#### 12.00") == "12.00"  # the built-in world compares strings
    assert arithmetic.extract_answer("\\boxed{12}") is None


def test_numeric_answer_reward_completion_without_answer_is_wrong():
    reward = numeric_answer_reward({"q": Fraction(12)})
    assert reward(["q"] * 5, ["#### 12.00", "The answer is $12", "#### 13", "I don't know", ""]) == [1, 1, 0, 0, 0]
    assert reward.__name__ == "answer_reward"


@pytest.mark.parametrize("path", GSM8K_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_gold_gsm8k_solution_parses_and_passes_format_reward(path, tok):
    lines = path.read_text().splitlines()
    rows = load_prompts_with_answers(path)  # raises on any gold that does not parse
    assert len(rows) == len(lines) and all(r["gold"] is not None for r in rows)
    golds = [json.loads(line)["answer"] for line in lines]
    assert format_reward([""] * len(golds), golds) == [1.0] * len(golds)
    assert numeric_answer_reward({r["prompt"]: r["gold"] for r in rows})(
        [r["prompt"] for r in rows], golds) == [1.0] * len(golds)  # every gold solution earns its reward


def test_gsm8k_files_found():
    assert len(GSM8K_FILES) >= 1


# --------------------------------------------------------------------------- characters the tokenizer does not know


UNKNOWN = [PAIR, {"prompt": "le film était", "chosen": " super .", "rejected": " nul ."},
           {"prompt": "it cost", "chosen": " 5 €", "rejected": " 5 dollars"}, {**PAIR, "prompt": "the café was"}]


def test_unknown_characters_counted_and_warned_once_with_examples(tmp_path, tok):
    path = write_jsonl(tmp_path / "hh.jsonl", UNKNOWN)
    report = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = load_preferences(path, tok, report=report)
    notes = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert notes == [f"{path}: 3 of 4 rows have characters the tokenizer does not know (e.g. 'é' row 1, '€' row 2); "
                     "they become <unk>; --strict-vocab makes this an error"]
    assert len(rows) == 4 and report["n_unknown"] == 3


def test_strict_vocab_names_the_first_row_and_field(tmp_path, tok):
    path = write_jsonl(tmp_path / "hh.jsonl", UNKNOWN)
    with pytest.raises(DataError) as e:
        load_preferences(path, tok, strict_vocab=True)
    assert one_line(e) == (f"{path}: row 1, field 'prompt': character 'é' (U+00E9) is not in the tokenizer's "
                           "vocabulary, it would become <unk> (--strict-vocab)")
    report = {}
    with pytest.warns(DataWarning, match="dropped 3 of 4"):
        assert load_preferences(path, tok, strict_vocab=True, drop_invalid=True, report=report) == [PAIR]
    assert report["n_unknown"] == 0


def test_unknown_character_field_is_the_files(tmp_path, tok):
    hh = {"chosen": "\n\nHuman: où?\n\nAssistant: ici", "rejected": "\n\nHuman: où?\n\nAssistant: là"}
    with pytest.raises(DataError, match=r"row 0, field 'chosen': character 'ù'"):
        load_preferences([hh], tok, strict_vocab=True)  # the implicit prompt is the start of 'chosen'
    gsm = load_prompts_with_answers  # the prompt of a GSM8K row is its 'question'
    with pytest.raises(DataError, match=r"row 0, field 'question': character '’'"):
        gsm([{"question": "Janet’s ducks?", "answer": "#### 18"}], tok, strict_vocab=True)


def test_real_gsm8k_unknown_characters(tok):
    report = {}
    with pytest.warns(DataWarning, match=r"32 of 300 rows have characters the tokenizer does not know \(e.g. '’'"):
        load_completions(GSM8K_FILES[0], tok, prompt_field="question", completion_field="answer", report=report)
    assert report["n_unknown"] == 32


def test_tokenizer_without_unk_token_knows_every_character():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer, core.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    byte_level = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>")
    assert byte_level.unk_token_id is None
    report = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert len(load_preferences(UNKNOWN, byte_level, report=report, strict_vocab=True)) == 4
    assert report["n_unknown"] == 0


def test_cli_prints_one_data_line_and_counts_in_the_summary(tmp_path, monkeypatch, capsys, tok, tiny_model):
    monkeypatch.chdir(tmp_path)
    tiny_model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    path = write_jsonl(tmp_path / "hh.jsonl", UNKNOWN + [{"prompt": "a", "chosen": " b"}])
    assert main(["dpo", "--model", str(tmp_path / "tiny"), "--dataset", str(path), "--drop-invalid", "--steps", "1",
                 "--batch-size", "2"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out[out.index("{"):])
    assert (summary["dataset_rows"], summary["dropped_rows"], summary["rows_with_unknown_chars"]) == (5, 1, 3)
    assert err.count("does not know") == 1 and err.count("dropped 1 of 5") == 1  # no second copy as a warning
    assert f"[data] {path}: 3 of 4 rows have characters the tokenizer does not know" in err


# --------------------------------------------------------------------------- GRPO runs that cannot learn


PROMPTS = ["3 +4\n", "5 *2\n", "1 -7\n", "8 +8\n"]


def tiny_grpo(tok, reward_fn, max_new_tokens: int):
    torch.manual_seed(0)
    model = new_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    cfg = GRPOConfig(steps=3, prompts_per_step=2, group_size=2, max_new_tokens=max_new_tokens, eval_every=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_grpo(model, tok, PROMPTS, reward_fn, cfg)
    return [str(w.message) for w in caught]


def test_grpo_warns_when_every_group_has_one_reward(tok):
    def zero(prompts, completions):
        return [0.0] * len(prompts)

    messages = tiny_grpo(tok, zero, max_new_tokens=2)
    assert ("reward is the same for every completion in 6 of 6 groups over the first 3 steps: the task is too hard "
            "or too easy for the model, or the reward cannot parse the answers; check --max-new-tokens and the "
            "answer format") in messages


def test_grpo_warns_when_completions_are_cut_at_max_new_tokens(tok):
    def by_length(prompts, completions):  # different for every completion: never flat
        return [float(i) for i in range(len(prompts))]

    messages = tiny_grpo(tok, by_length, max_new_tokens=2)
    assert not any("reward is the same" in m for m in messages)
    cut = [m for m in messages if "--max-new-tokens 2" in m]
    assert len(cut) == 1 and cut[0].endswith("over the first 3 steps were cut at --max-new-tokens 2 before they "
                                             "ended: raise --max-new-tokens")


def test_early_rollout_warning_thresholds():
    def rounds(flat: float, ended: float) -> list[dict]:
        return [{"frac_reward_zero_std": flat, "completion/ended": ended}] * 2

    assert early_rollout_warnings(rounds(0.85, 0.5), 2, 10, 4, 64) == []  # 17 of 20 groups, half cut
    flat, cut = early_rollout_warnings(rounds(0.9, 0.4), 2, 10, 4, 64)
    assert flat.startswith("reward is the same for every completion in 18 of 20 groups over the first 2 steps")
    assert cut.startswith("48 of 80 completions (60%) over the first 2 steps were cut at --max-new-tokens 64")


# --------------------------------------------------------------------------- completions that end with EOS


def test_no_second_eos_after_a_completion_that_ends_with_it(tok):
    b = encode_pairs(tok, ["ab", "ab"], ["cd<eos>", "cd"])
    ids = [row[m.bool()].tolist() for row, m in zip(b["input_ids"], b["completion_mask"])]
    assert ids[0] == ids[1] == tok("cd", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_chatml_eos_is_not_appended_twice_and_not_counted_twice(tmp_path):
    chatml = build_char_tokenizer()
    chatml.add_special_tokens({"eos_token": "<|im_end|>"})
    chatml.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [row])
    n = len(chatml(chatml.apply_chat_template(row["messages"], tokenize=False), add_special_tokens=False)["input_ids"])
    rows = load_completions(path, chatml, max_length=n)  # fits exactly: no EOS counted on top
    assert rows[0]["completion"] == "hello<|im_end|>\n"
    with pytest.raises(DataError, match=f"prompt \\+ completion is {n} tokens, longer than max_length={n - 1}"):
        load_completions(path, chatml, max_length=n - 1)
    b = encode_pairs(chatml, [rows[0]["prompt"]], [rows[0]["completion"]])
    ids = b["input_ids"][0][b["completion_mask"][0].bool()].tolist()
    assert ids.count(chatml.eos_token_id) == 1 and b["attention_mask"].sum() == n
