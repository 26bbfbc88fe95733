"""Fast probing (shared-prefix KV cache, each context once, batches, partial logits) equals the original loop."""

import numpy as np
import pytest

from ift_utils import prompts
from ift_utils.probing import (
    PromptSpec,
    _common_prefix,
    encode_question,
    letter_token_ids,
    score_mcqs,
    score_reference,
)
from ift_utils.records import MCQ


def _probs(frame) -> np.ndarray:
    """All option probabilities of a frame, question after question (questions may have different counts)."""
    return np.concatenate([np.asarray(p) for p in frame.probs])


@pytest.mark.parametrize("two_level", [True, False])
@pytest.mark.parametrize("mode", ["letter", "cloze"])
@pytest.mark.parametrize("template", ["none", "vicuna", "model"])
def test_fast_equals_reference(tiny, questions, mode, template, two_level):
    model, tok = tiny
    spec = PromptSpec(mode=mode, demos=tuple(questions[:2]) if template == "none" else (), subject="geography",
                      template=template)
    fast = score_mcqs(model, tok, questions[2:], spec, max_batch=3, show_progress=False, two_level=two_level)
    ref = score_reference(model, tok, questions[2:], spec)
    assert np.abs(_probs(fast) - _probs(ref)).max() < 1e-5
    assert (fast.pred == ref.pred).all()
    assert np.allclose([sum(p) for p in fast.probs], 1.0)


@pytest.fixture
def uneven():
    """Options of 1 to many tokens, and questions with 2, 4 and 5 options, so that level 2 gathers ragged rows."""
    names = ["A", "France", "Reverse sorted list of words", "Bo", "the capital currency continent", "Lyon"]
    return [MCQ(id=i, question=f"Which one is number {i}{'?' * (i % 3)}", choices=tuple((names * 2)[i % 3: i % 3 + n]),
                answer=i % n, domain="geo", subject="geography") for i, n in enumerate([2, 4, 5, 3, 4, 2, 5])]


@pytest.mark.parametrize("template", ["none", "model"])
def test_two_level_equals_reference_on_ragged_options(tiny, uneven, template):
    model, tok = tiny
    spec = PromptSpec(mode="cloze", demos=tuple(uneven[:1]) if template == "none" else (), template=template)
    lengths = {len(s) for q in uneven for _, s in encode_question(tok, q, spec)}
    assert min(lengths) == 1 and max(lengths) >= 4  # single-token options skip level 2, long ones use it
    ref = _probs(score_reference(model, tok, uneven, spec))
    for max_batch, max_tokens in ((16, 4096), (2, 8)):  # (2, 8): level-2 rows split into several chunks
        got = _probs(score_mcqs(model, tok, uneven, spec, max_batch=max_batch, max_tokens=max_tokens,
                                show_progress=False))
        assert np.abs(got - ref).max() < 1e-5


@pytest.mark.parametrize("mode", ["letter", "cloze"])
def test_chat_template_prefix_is_shared(tiny, questions, mode):
    """Fine-tuned 0-shot prompts differ only after the template's opening: the cached prefix holds all of it."""
    _, tok = tiny
    spec = PromptSpec(mode=mode, template="model")
    contexts = [ctx for q in questions for ctx, _ in encode_question(tok, q, spec)]
    opening = prompts.chat("\x00", "model", tok).split("\x00")[0]  # the template up to the user's text
    assert _common_prefix(contexts) >= len(tok(opening, add_special_tokens=False).input_ids)


def test_letter_token_ids_are_last_id_of_bare_letter(tiny):
    _, tok = tiny
    ids = letter_token_ids(tok, 4)
    assert ids == [tok("ABCD"[i], add_special_tokens=False).input_ids[-1] for i in range(4)]
    assert len(set(ids)) == 4


def test_frame_columns_and_confidence(tiny, questions):
    model, tok = tiny
    f = score_mcqs(model, tok, questions, PromptSpec(mode="cloze", subject="geography"), show_progress=False)
    assert list(f.columns[:3]) == ["id", "domain", "subject"]
    assert (f.confidence == f.probs.apply(max)).all()
    assert (f.correct == (f.pred == f.answer)).all()
    assert (f["mode"] == "cloze").all()


def test_bad_mode(tiny, questions):
    with pytest.raises(ValueError, match="scoring mode"):
        score_mcqs(*tiny, questions, PromptSpec(mode="logits"))
