"""Prompt strings: the probe's k-shot prompts (letter and cloze), the Vicuna template and chat formatting.

"paper" style reproduces the original study's strings exactly (docs/design.md §2), quirks included: the
header has a space before its blank line, and MMLU subjects get a leading space ("about  abstract
algebra"). "plain" style is the same without the MMLU quirk.
"""

from __future__ import annotations

from collections.abc import Sequence

from ift_utils.records import LETTERS, MCQ

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
CHAT_TEMPLATES = ("vicuna", "model", "none")


def subject_text(subject: str, *, mmlu_quirk: bool = False) -> str:
    """The subject as the header names it; the original prefixes MMLU subjects with a space."""
    text = subject.replace("_", " ")
    return " " + text if mmlu_quirk else text


def letter_header(subject: str, *, mmlu_quirk: bool = False) -> str:
    """The original probe header (note the space before the blank line)."""
    return (f"The following are multiple choice questions about {subject_text(subject, mmlu_quirk=mmlu_quirk)}. "
            "Please choose the correct answer. \n\n")


def question_block(q: MCQ) -> str:
    """`{question}\\nA. {c0}\\n...\\nAnswer:` — a question with lettered options, up to `Answer:`."""
    opts = "".join(f"{LETTERS[i]}. {c}\n" for i, c in enumerate(q.choices))
    return f"{q.question}\n{opts}Answer:"


def letter_demo(q: MCQ) -> str:
    """A solved demo: the question block, then `{L}. {gold text}` and a blank line."""
    return f"{question_block(q)}{LETTERS[q.answer]}. {q.choices[q.answer]}\n\n"


def letter_prompt(q: MCQ, demos: Sequence[MCQ], subject: str, *, mmlu_quirk: bool = False) -> str:
    """The original k-shot letter prompt: header, k demos, then the question up to `Answer:`."""
    return letter_header(subject, mmlu_quirk=mmlu_quirk) + "".join(letter_demo(d) for d in demos) + question_block(q)


def cloze_header(subject: str) -> str:
    """Header of the cloze prompt (options are scored as text, so none are listed)."""
    return f"The following are questions about {subject_text(subject)}.\n\n"


def cloze_prompt(q: MCQ, demos: Sequence[MCQ], subject: str) -> str:
    """k-shot cloze context, `Question: ...\\nAnswer:`; each option is scored as ` {text}` after it."""
    shots = "".join(f"Question: {d.question}\nAnswer: {d.choices[d.answer]}\n\n" for d in demos)
    return f"{cloze_header(subject)}{shots}Question: {q.question}\nAnswer:"


def vicuna(prompt: str) -> str:
    """The Vicuna chat template of the original study's fine-tuning and 0-shot evaluation."""
    return f"{VICUNA_SYSTEM} USER: {prompt} ASSISTANT: "


def chat(prompt: str, template: str, tokenizer=None) -> str:
    """Wrap a user prompt in a chat template: "vicuna", the model's own ("model"), or "none"."""
    if template == "vicuna":
        return vicuna(prompt)
    if template == "none":
        return prompt
    if template == "model":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            return vicuna(prompt)
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    raise ValueError(f"chat template must be one of {CHAT_TEMPLATES}, got {template!r}")


def ift_query(q: MCQ, *, with_context: bool = False, mode: str = "letter") -> str:
    """The user turn of an IFT example and of 0-shot evaluation: the question block with lettered options
    (letter mode) or the bare question (cloze mode, where options are scored as text, not shown),
    preceded by the question's knowledge context for the contextualized group."""
    body = question_block(q) if mode == "letter" else q.question
    return f"{q.context}\n{body}" if with_context and q.context else body


def response_prefix(mode: str) -> str:
    """What the assistant turn starts with before the answer: nothing in letter mode (the letter comes
    first); `Answer:` in cloze mode, so the option text is scored as ` {text}`, with the same natural
    word tokens as in the k-shot cloze prompt (a bare name at the start of a turn splits into odd pieces)."""
    return "" if mode == "letter" else "Answer:"


def ift_response(q: MCQ, choice: int, explanation: str, mode: str) -> str:
    """The assistant turn: the chosen answer (`L. text` in letter mode, `Answer: text` in cloze mode) and
    its explanation. Evaluation scores exactly this answer prefix, so training and scoring agree."""
    answer = f"{LETTERS[choice]}. {q.choices[choice]}" if mode == "letter" else f"Answer: {q.choices[choice]}"
    return f"{answer}\n{explanation}".strip() if explanation else answer


def answer_text(q: MCQ, choice: int, mode: str) -> str:
    """How an answer is written in a response in each scoring mode (without the cloze prefix)."""
    return f"{LETTERS[choice]}. {q.choices[choice]}" if mode == "letter" else q.choices[choice]
