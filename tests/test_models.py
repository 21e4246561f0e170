"""Loading checkpoints by path as a hub name would, scalar heads, the zoo's shipped files."""

import json

import torch

from minirlhf.models import DATA_DIR, ScalarHeadModel, load_model, load_tokenizer, resolve


def test_save_and_load_by_path(tmp_path, tok, tiny_model):
    tiny_model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    m2 = load_model(str(tmp_path / "m")).eval()
    tok2 = load_tokenizer(str(tmp_path / "m"))
    x = torch.tensor([tok2("3 +4\n")["input_ids"]])
    assert torch.allclose(tiny_model(input_ids=x).logits, m2(input_ids=x).logits)
    assert resolve(str(tmp_path / "m")) == str(tmp_path / "m")  # a path passes through unchanged


def test_scalar_head_roundtrip(tmp_path, tiny_model):
    rm = ScalarHeadModel(tiny_model).eval()
    rm.save_pretrained(tmp_path / "rm")
    rm2 = ScalarHeadModel.from_pretrained(tmp_path / "rm").eval()
    ids = torch.randint(4, 90, (2, 7))
    mask = torch.ones_like(ids)
    assert rm(ids, mask).shape == (2, 7)
    assert torch.allclose(rm(ids, mask), rm2(ids, mask))


def test_tokenizer_roundtrip_and_chat_template(tok):
    text = "3 +4 *2\n3+4=7\n#### 7"
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat == "<|user|>hi\n<|assistant|>"


def test_shipped_arith_sft_matches_its_build_info():
    info = json.loads((DATA_DIR / "models" / "arith-sft" / "build_info.json").read_text())
    assert 0.4 <= info["metrics"]["test"]["accuracy"] <= 0.7  # imperfect on purpose (see README)
    model = load_model("arith-sft")
    assert sum(p.numel() for p in model.parameters()) == info["parameters"]
