"""Prompt strings against hand-written expected strings (paper mode must match docs/design.md §2 exactly)."""

from ift_utils import prompts
from ift_utils.records import MCQ

Q = MCQ(id=1, question="What is 2+2?", choices=("3", "4", "5", "6"), answer=1, subject="abstract_algebra")
D = MCQ(id=2, question="What is 1+1?", choices=("2", "3", "4", "5"), answer=0, subject="abstract_algebra")


def test_letter_prompt_paper_mmlu_quirk():
    expected = ("The following are multiple choice questions about  abstract algebra. Please choose the correct "
                "answer. \n\n"
                "What is 1+1?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer:A. 2\n\n"
                "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
    assert prompts.letter_prompt(Q, [D], "abstract_algebra", mmlu_quirk=True) == expected


def test_letter_prompt_plain_has_single_space():
    p = prompts.letter_prompt(Q, [], "history")
    assert p == ("The following are multiple choice questions about history. Please choose the correct answer. \n\n"
                 "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")


def test_vicuna_template():
    assert prompts.vicuna("Hi") == ("A chat between a curious user and an artificial intelligence assistant. "
                                    "The assistant gives helpful, detailed, and polite answers to the user's "
                                    "questions. USER: Hi ASSISTANT: ")
    assert prompts.chat("Hi", "vicuna") == prompts.vicuna("Hi")
    assert prompts.chat("Hi", "none") == "Hi"


def test_cloze_prompt():
    assert prompts.cloze_prompt(Q, [D], "arithmetic") == (
        "The following are questions about arithmetic.\n\nQuestion: What is 1+1?\nAnswer: 2\n\n"
        "Question: What is 2+2?\nAnswer:")


def test_ift_query_and_response():
    q = MCQ(id=3, question="Where is Lyon?", choices=("Spain", "France"), answer=1, context="Lyon is in France.")
    assert prompts.ift_query(q) == "Where is Lyon?\nA. Spain\nB. France\nAnswer:"
    assert prompts.ift_query(q, with_context=True) == "Lyon is in France.\nWhere is Lyon?\nA. Spain\nB. France\nAnswer:"
    assert prompts.ift_response(q, 1, "Because.", "letter") == "B. France\nBecause."
    assert prompts.ift_response(q, 0, "", "cloze") == "Answer: Spain"
    assert prompts.ift_query(q, mode="cloze") == "Where is Lyon?"
    assert prompts.ift_query(q, with_context=True, mode="cloze") == "Lyon is in France.\nWhere is Lyon?"


def test_model_chat_template(tiny):
    _, tok = tiny
    assert prompts.chat("Hi", "model", tok) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
