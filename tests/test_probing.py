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


def _facts_questions():
    """Facts-suite-like questions (the entity recorded in `raw`), with differing options, plus one that is not."""
    from ift_utils.data_facts import SOURCE

    opts = [("France", "Spain", "Italy", "Germany"), ("Spain", "Portugal", "France", "Andorra"),
            ("Germany", "Poland", "Czechia", "Austria")]
    qs = [MCQ(id=i, question=f"In which country is the city of Town{i}?", choices=opts[i % 3], answer=i % 4,
              subject="geography", raw={"entity": f"Town{i}", "relation": "country", "source": SOURCE})
          for i in range(6)]
    return qs + [MCQ(id=99, question="Which is the odd one out?", choices=("2", "4", "7", "8"), answer=2,
                     subject="geography")]


def test_content_free_prompts():
    from ift_utils.probing import _content_free_set, content_free

    qs = _facts_questions()
    assert content_free(qs[0]).question == "In which country is the city of N/A?"
    assert content_free(qs[0]).choices == qs[0].choices and content_free(qs[-1]).question == "N/A"
    items, index = _content_free_set(qs, "cloze")
    assert len(items) == 2  # one context per distinct content-free prompt, options as its suffixes
    assert set(items[0].choices) == {c for q in qs[:6] for c in q.choices} and len(set(items[0].choices)) == 9
    assert [items[k].choices[i] for k, i in index[1]] == list(qs[1].choices)
    assert len(_content_free_set(qs, "letter")[0]) == 4  # letter mode: one per distinct option list


@pytest.mark.parametrize("two_level", [True, False])
@pytest.mark.parametrize(("mode", "template"), [("cloze", "none"), ("cloze", "vicuna"), ("letter", "none"),
                                                ("letter", "vicuna")])
def test_calibrated_equals_hand_computed(tiny, mode, template, two_level):
    """probs_cal = softmax(log p(option | prompt) − log p(option | content-free prompt)), the two computed by the
    reference loop on the question and on its content-free copy."""
    from ift_utils.probing import calibrated, content_free

    model, tok = tiny
    qs = _facts_questions()
    spec = PromptSpec(mode=mode, demos=tuple(qs[:2]) if template == "none" else (), subject="geography",
                      template=template)
    fast = score_mcqs(model, tok, qs[2:], spec, max_batch=3, show_progress=False, two_level=two_level,
                      calibrate=True)
    ref = score_reference(model, tok, qs[2:], spec)
    prior = score_reference(model, tok, [content_free(q) for q in qs[2:]], spec)
    assert np.abs(_probs(fast) - _probs(ref)).max() < 1e-5
    for row, p, c, q in zip(fast.itertuples(), ref.probs, prior.probs, qs[2:], strict=True):
        assert np.allclose(row.probs_cf, c, atol=1e-5)
        want = calibrated(p, c)
        by_hand = np.exp(np.log(p) - np.log(c)) / np.exp(np.log(p) - np.log(c)).sum()
        assert np.allclose(want, by_hand)
        assert np.allclose(row.probs_cal, want, atol=1e-5)
        assert row.pred_cal == int(np.argmax(want)) and row.correct_cal == (row.pred_cal == q.answer)
        assert row.confidence_cal == pytest.approx(max(want))
    assert "probs_cal" not in score_mcqs(model, tok, qs[2:], spec, show_progress=False).columns
