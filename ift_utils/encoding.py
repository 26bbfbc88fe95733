"""One encoder for training, probing and evaluation, so that a fine-tuned model is scored on exactly the token
ids it was trained on (docs/design.md §3, "one network, one encoder").

- Special tokens: `bos=True` puts the tokenizer's own leading special tokens (whatever `add_special_tokens=True`
  adds before the text: BOS for LLaMA/Mistral, nothing for SmolLM2/Qwen) before the prompt, once, also when the
  prompt text already starts with them (chat templates that write `<s>` themselves); `bos=False` adds none.
  Trailing special tokens (an EOS some tokenizers append) are never added to a prompt.
- The prompt/response seam: the prompt and the response are tokenized separately, as training does, so the
  prompt's ids are a prefix of every training sequence; the scored continuation of an answer is the part of the
  response's ids after the ids of its fixed start (`Answer:` in cloze mode), not a separately tokenized string.
"""

from __future__ import annotations

from typing import Any

_PROBE = "a"  # any ordinary text: what add_special_tokens=True adds around it is the tokenizer's policy


def special_prefix(tok: Any) -> list[int]:
    """The ids `add_special_tokens=True` puts before a text (e.g. [BOS]); [] for tokenizers that add none."""
    with_specials = tok(_PROBE, add_special_tokens=True)["input_ids"]
    plain = tok(_PROBE, add_special_tokens=False)["input_ids"]
    for start in range(len(with_specials) - len(plain) + 1):
        if with_specials[start:start + len(plain)] == plain:
            return list(with_specials[:start])
    raise ValueError(f"cannot find the text's ids {plain} inside {with_specials}: the tokenizer changes a text's "
                     "own ids when it adds special tokens, so no prompt/response split can be exact")


def encode_text(tok: Any, text: str) -> list[int]:
    """A text's own ids, no special tokens (a response, or a part of one)."""
    return list(tok(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tok: Any, prompt: str, *, bos: bool = True) -> list[int]:
    """A prompt's ids: the tokenizer's leading special tokens (once) when `bos`, then the text's own ids."""
    ids = encode_text(tok, prompt)
    if not bos:
        return ids
    lead = special_prefix(tok)
    if lead and ids[: len(lead)] == lead:  # the chat template already wrote them
        return ids
    return lead + ids


def encode_pair(tok: Any, prompt: str, response: str, *, bos: bool = True) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of one training example or scored answer, tokenized separately (no EOS)."""
    return encode_prompt(tok, prompt, bos=bos), encode_text(tok, response)


def split_scored(context: list[int], whole: list[int]) -> tuple[list[int], list[int]]:
    """Split `whole` into (context part, scored part) where it leaves `context`'s ids: the scored part is what
    follows the longest common prefix, at least one token, and the context part keeps at least one token."""
    n = 0
    limit = min(len(context), len(whole) - 1)
    while n < limit and context[n] == whole[n]:
        n += 1
    if n == 0:
        raise ValueError("nothing to condition on: the context's first token differs from the scored text's, or "
                         "the scored text has a single token and no context")
    return whole[:n], whole[n:]


def answer_rows(tok: Any, prompt: str, responses: list[str], response_start: str, *,
                bos: bool = True) -> list[tuple[list[int], list[int]]]:
    """For each candidate response: (context ids, scored ids), where context + scored is exactly the training
    sequence's prompt ids + the response's first tokens, and the scored ids are the response's ids after those
    of `response_start` (e.g. `Answer:`; "" scores the whole response)."""
    prompt_ids = encode_prompt(tok, prompt, bos=bos)
    start_ids = encode_text(tok, response_start) if response_start else []
    rows = []
    for r in responses:
        resp = encode_text(tok, r)
        if not resp:
            raise ValueError(f"response {r!r} encodes to no tokens: nothing to score")
        ctx, scored = split_scored(prompt_ids + start_ids, prompt_ids + resp)
        rows.append((ctx, scored))
    return rows


def continuation_rows(tok: Any, context: str, continuations: list[str], *,
                      bos: bool = True) -> list[tuple[list[int], list[int]]]:
    """For each continuation of a k-shot context: (context ids, scored ids) of `context + continuation`
    encoded as one text and split where its ids leave the context's own ids (no seam of our making)."""
    ctx_ids = encode_prompt(tok, context, bos=bos)
    return [split_scored(ctx_ids, encode_prompt(tok, context + c, bos=bos)) for c in continuations]


__all__ = ["special_prefix", "encode_text", "encode_prompt", "encode_pair", "split_scored", "answer_rows",
           "continuation_rows"]
