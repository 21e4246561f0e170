"""Prompts a real instruct model can answer: a question, an instruction, the chat template.

An instruct model scores on GSM8K only when it is asked in its own chat format and told how to
write the final answer; a bare question with no template gets rambling text, and a correct answer
written as "The total is 18" may not match what the grader extracts. So the RL and SFT runners,
given `--chat-template`, send every question as

    tokenizer.apply_chat_template([{"role": "system", ...}?, {"role": "user", "content": question + "\\n\\n" + instruction}],
                                  add_generation_prompt=True)

with the default instruction asking for the final line "#### <number>", the first form that
`worlds.arithmetic.extract_numeric_answer` looks for (and the one GSM8K's own solutions end with).
SFT on GSM8K's {question, answer} rows renders the answer as the assistant's turn, end-of-turn
token included, so SFT, RL and `minirlhf eval` all see one format.
"""

from __future__ import annotations

from .data import render_chat

DEFAULT_INSTRUCTION = ("Solve the problem step by step. On the last line, write the final answer as "
                       "'#### <number>'.")
"""Asks for the "#### N" line the answer extractor reads first (GSM8K's own format)."""


def user_message(question: str, instruction: str | None = DEFAULT_INSTRUCTION) -> str:
    """The user's turn: the question, a blank line, the instruction (none if it is None or empty)."""
    return f"{question.rstrip()}\n\n{instruction}" if instruction else question


def chat_prompt(tokenizer, question: str, instruction: str | None = DEFAULT_INSTRUCTION,
                system: str | None = None) -> str:
    """The text the model is given: the chat template applied to (system,) user, with the generation
    prompt (the assistant's turn opened). Raises DataError if the tokenizer has no chat template."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user_message(question, instruction)}]
    return render_chat(tokenizer, messages, add_generation_prompt=True)


def chat_completion(tokenizer, question: str, answer: str, instruction: str | None = DEFAULT_INSTRUCTION,
                    system: str | None = None) -> tuple[str, str]:
    """(prompt, completion) for SFT: `chat_prompt`, and the answer as the assistant's turn as the
    template renders it (for ChatML "answer<|im_end|>\\n": ending in the EOS token, so no second EOS)."""
    prompt = chat_prompt(tokenizer, question, instruction, system)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user_message(question, instruction)},
        {"role": "assistant", "content": answer}]
    full = render_chat(tokenizer, messages, add_generation_prompt=False)
    if not full.startswith(prompt):  # a template that renders earlier turns differently once answered
        raise ValueError("the chat template renders the prompt differently once the answer follows; "
                         "cannot split prompt and completion")
    return prompt, full[len(prompt):]


def chat_rows(tokenizer, rows: list[dict], instruction: str | None = DEFAULT_INSTRUCTION,
              system: str | None = None) -> list[dict]:
    """Rows with a "prompt" (the question) and optionally a "completion" -> the same rows in the chat
    format: "prompt" rendered by `chat_prompt`, "completion" by `chat_completion`; other fields kept
    ("question" keeps the raw question)."""
    out = []
    for r in rows:
        if "completion" in r:
            prompt, completion = chat_completion(tokenizer, r["prompt"], r["completion"], instruction, system)
            out.append({**r, "question": r["prompt"], "prompt": prompt, "completion": completion})
        else:
            out.append({**r, "question": r["prompt"], "prompt": chat_prompt(tokenizer, r["prompt"], instruction, system)})
    return out
