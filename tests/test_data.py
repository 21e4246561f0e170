"""Dataset formats -> validated rows -> tensors: every format, every bad-row error, the batch layout."""

import json
from pathlib import Path

import pytest
import torch

from minirlhf.data import (encode_preference_batch, load_completions, load_preferences,
                           normalize_completion_row, normalize_preference_row, split_implicit_prompt)
from minirlhf.lm import encode_pairs

GSM8K = Path(__file__).resolve().parents[1] / "data" / "gsm8k" / "gsm8k_test_300.jsonl"  # MIT, see LICENSE there


# --------------------------------------------------------------------------- implicit prompts


def test_split_hh_conversation_at_last_assistant_turn():
    shared = "\n\nHuman: hi\n\nAssistant: hello!\n\nHuman: name a fruit\n\nAssistant:"
    p, c, r = split_implicit_prompt(shared + " An apple.", shared + " A carrot.")
    assert p == shared
    assert (c, r) == (" An apple.", " A carrot.")


def test_split_hh_when_replies_share_their_first_words():
    # the common prefix runs into the final reply ("Sure"), but the prompt still ends at the turn
    shared = "\n\nHuman: help me\n\nAssistant:"
    p, c, r = split_implicit_prompt(shared + " Sure, here it is.", shared + " Sure, no.")
    assert p == shared and c == " Sure, here it is." and r == " Sure, no."


def test_split_hh_earlier_turns_differ_uses_marker_inside_common_prefix():
    a = "\n\nHuman: q\n\nAssistant: one\n\nHuman: more\n\nAssistant: x"
    b = "\n\nHuman: q\n\nAssistant: two"
    p, c, r = split_implicit_prompt(a, b)
    assert p == "\n\nHuman: q\n\nAssistant:"
    assert c == " one\n\nHuman: more\n\nAssistant: x" and r == " two"


def test_split_plain_text_at_whitespace_boundary():
    p, c, r = split_implicit_prompt("the film was great .", "the film was grim .")
    assert (p, c, r) == ("the film was", " great .", " grim .")  # no half word "gr"


def test_split_identical_is_an_error():
    with pytest.raises(ValueError, match="identical"):
        split_implicit_prompt("same", "same")


# --------------------------------------------------------------------------- preference rows


def test_explicit_row_kept_with_extra_fields():
    row = {"prompt": "p", "chosen": " a", "rejected": " b", "margin": 1.5}
    assert normalize_preference_row(row, 0) == row


def test_implicit_string_row():
    out = normalize_preference_row({"chosen": "it was fun .", "rejected": "it was bad ."}, 0)
    assert out == {"prompt": "it was", "chosen": " fun .", "rejected": " bad ."}


def test_conversational_row_with_prompt(tok):
    row = {"prompt": [{"role": "user", "content": "hi"}],
           "chosen": [{"role": "assistant", "content": "hello"}],
           "rejected": [{"role": "assistant", "content": "go away"}]}
    out = normalize_preference_row(row, 0, tok)
    assert out == {"prompt": "<|user|>hi\n<|assistant|>", "chosen": "hello\n", "rejected": "go away\n"}


def test_conversational_row_implicit_prompt(tok):
    turn = [{"role": "user", "content": "hi"}]
    row = {"chosen": turn + [{"role": "assistant", "content": "hello"}],
           "rejected": turn + [{"role": "assistant", "content": "no"}]}
    out = normalize_preference_row(row, 0, tok)
    assert out == {"prompt": "<|user|>hi\n<|assistant|>", "chosen": "hello\n", "rejected": "no\n"}


@pytest.mark.parametrize("row, field, message", [
    ({"prompt": "p", "rejected": "b"}, "chosen", "missing"),
    ({"prompt": "p", "chosen": "a"}, "rejected", "missing"),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "chosen", "expected a string"),
    ({"prompt": 7, "chosen": "a", "rejected": "b"}, "prompt", "expected a string"),
    ({"prompt": "p", "chosen": "  ", "rejected": "b"}, "chosen", "empty"),
    ({"prompt": "p", "chosen": "a", "rejected": "a"}, "rejected", "identical"),
    ({"prompt": [{"role": "user"}], "chosen": [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "prompt", "must be a dict with"),
    ({"prompt": [{"role": "robot", "content": "x"}], "chosen": [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "prompt", "has role 'robot'"),
    ({"prompt": [{"role": "user", "content": "x"}], "chosen": [{"role": "assistant", "content": 5}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "chosen", "content of type int"),
    ({"prompt": [{"role": "user", "content": "x"}], "chosen": [{"role": "assistant", "content": "a"}],
      "rejected": "b"}, "rejected", "list of messages"),
    ({"chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "b"}]},
     "chosen", "share all messages"),
])
def test_bad_preference_rows_name_source_row_and_field(tok, row, field, message):
    with pytest.raises(ValueError) as e:
        normalize_preference_row(row, 3, tok, source="prefs.jsonl")
    assert f"prefs.jsonl: row 3, field '{field}'" in str(e.value)
    assert message in str(e.value)


def test_conversational_row_without_chat_template_is_an_error():
    row = {"prompt": [{"role": "user", "content": "x"}], "chosen": [{"role": "assistant", "content": "a"}],
           "rejected": [{"role": "assistant", "content": "b"}]}
    with pytest.raises(ValueError, match="chat template"):
        normalize_preference_row(row, 0, tokenizer=None)


# --------------------------------------------------------------------------- loading


GOOD = [{"prompt": "p", "chosen": " a", "rejected": " b"}, {"chosen": "x y", "rejected": "x z"}]
BAD = {"prompt": "p", "chosen": " a", "rejected": " a"}


def test_load_preferences_from_list_jsonl_parquet_and_dataset(tmp_path):
    from datasets import Dataset

    expected = [GOOD[0], {"prompt": "x", "chosen": " y", "rejected": " z"}]
    assert load_preferences(GOOD) == expected
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in GOOD[:1] * 2))
    assert load_preferences(path) == [GOOD[0]] * 2
    ds = Dataset.from_list(GOOD[:1] * 3)
    assert load_preferences(ds) == [GOOD[0]] * 3
    ds.to_parquet(str(tmp_path / "prefs.parquet"))
    assert load_preferences(tmp_path / "prefs.parquet") == [GOOD[0]] * 3


def test_load_preferences_bad_row_raises_with_its_index_and_path(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [GOOD[0], GOOD[0], BAD]))
    with pytest.raises(ValueError, match=r"prefs.jsonl: row 2, field 'rejected'"):
        load_preferences(path)


def test_drop_invalid_warns_and_reports_the_count():
    report = {}
    with pytest.warns(UserWarning, match="dropped 2 of 4 invalid rows"):
        rows = load_preferences([GOOD[0], BAD, GOOD[1], {"prompt": "p"}], drop_invalid=True, report=report)
    assert len(rows) == 2
    assert report["n_dropped"] == 2 and report["n_rows"] == 4
    assert "row 1" in report["errors"][0] and "row 3" in report["errors"][1]


def write_bytes_rows(path, rows: list[bytes]):
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path


GOOD_LINE = json.dumps(GOOD[0]).encode()
BAD_UTF8_LINE = b'{"prompt": "p", "chosen": " caf\xe9 au lait", "rejected": " tea"}'  # Latin-1 e-acute


def test_invalid_utf8_names_file_row_and_field(tmp_path):
    path = write_bytes_rows(tmp_path / "latin1.jsonl", [GOOD_LINE, BAD_UTF8_LINE, GOOD_LINE])
    with pytest.raises(ValueError, match=r"latin1\.jsonl: row 1, field 'chosen': not valid UTF-8 text "
                                         r"\(byte 0xe9 at character 4\)"):
        load_preferences(path)


def test_invalid_utf8_rows_dropped_and_counted(tmp_path):
    path = write_bytes_rows(tmp_path / "latin1.jsonl", [GOOD_LINE, BAD_UTF8_LINE, GOOD_LINE])
    report = {}
    with pytest.warns(UserWarning, match="dropped 1 of 3 invalid rows"):
        rows = load_preferences(path, drop_invalid=True, report=report)
    assert rows == [GOOD[0], GOOD[0]] and report["n_dropped"] == 1 and "UTF-8" in report["errors"][0]


def test_invalid_utf8_inside_messages_and_in_a_json_array(tmp_path, tok):
    chat = b'[{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\xff"}]}]'
    path = tmp_path / "chat.json"
    path.write_bytes(chat)
    with pytest.raises(ValueError, match=r"chat\.json: row 0, field 'messages': not valid UTF-8 text \(byte 0xff"):
        load_completions(path, tokenizer=tok)


def test_unsupported_source_types():
    with pytest.raises(ValueError, match="unsupported file type"):
        load_preferences(Path(__file__))  # a .py file exists but is not a data format
    with pytest.raises(TypeError):
        load_preferences(42)


# --------------------------------------------------------------------------- completion rows


def test_completion_rows_plain_and_messages(tok):
    assert normalize_completion_row({"prompt": "2+2=", "completion": "4"}, 0) == {"prompt": "2+2=", "completion": "4"}
    row = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"}]}
    out = normalize_completion_row(row, 0, tok)
    assert out == {"prompt": "<|system|>be brief\n<|user|>hi\n<|assistant|>", "completion": "hello\n"}
    # prompt + completion is exactly the whole conversation rendered
    assert out["prompt"] + out["completion"] == tok.apply_chat_template(row["messages"], tokenize=False)


@pytest.mark.parametrize("row, field, message", [
    ({"prompt": "p"}, "completion", "missing"),
    ({"prompt": "p", "completion": ""}, "completion", "empty"),
    ({"prompt": ["p"], "completion": "c"}, "prompt", "expected a string"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages", "must be the assistant"),
    ({"messages": "hi"}, "messages", "non-empty list"),
])
def test_bad_completion_rows(tok, row, field, message):
    with pytest.raises(ValueError) as e:
        normalize_completion_row(row, 5, tok, source="sft.jsonl")
    assert f"sft.jsonl: row 5, field '{field}'" in str(e.value) and message in str(e.value)


def test_load_completions_max_length_names_the_row(tok):
    rows = [{"prompt": "ab", "completion": "cd"}, {"prompt": "ab", "completion": "cdefgh"}]
    with pytest.raises(ValueError, match=r"row 1, field 'completion'.*9 tokens.*max_length=8"):
        load_completions(rows, tok, max_length=8)  # row 1: 2 + 6 + EOS = 9 tokens
    assert len(load_completions(rows, tok, max_length=9)) == 2


def test_load_completions_real_gsm8k_with_field_mapping(tok):
    rows = load_completions(GSM8K, tok, prompt_field="question", completion_field="answer", max_length=2048)
    assert len(rows) == 300
    assert rows[0]["prompt"].startswith("Janet")
    assert all(r["completion"].rsplit("####", 1)[1].strip() for r in rows)  # every answer has its "#### N"
    with pytest.raises(ValueError, match="field 'prompt': missing"):
        load_completions(GSM8K, tok)  # without the mapping, the error says which field is missing


# --------------------------------------------------------------------------- tensors


def test_encode_preference_batch_is_encode_pairs_with_chosen_first(tok):
    rows = [{"prompt": "the film was", "chosen": " great .", "rejected": " bad and long ."},
            {"prompt": "it is", "chosen": " fun .", "rejected": " dull ."}]
    batch = encode_preference_batch(tok, rows)
    ref = encode_pairs(tok, ["the film was", "it is"] * 2, [" great .", " fun .", " bad and long .", " dull ."])
    for k in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(batch[k], ref[k])
    assert batch["input_ids"].shape[0] == 4
    ids = batch["input_ids"][2][batch["completion_mask"][2].bool()].tolist()
    assert ids[-1] == tok.eos_token_id and tok.decode(ids[:-1]) == " bad and long ."
    with pytest.raises(ValueError, match="row 2"):  # the rejected half of pair 0 is row 2
        encode_preference_batch(tok, rows, max_length=25)
