"""Fast probing (shared-prefix KV cache, batches, partial logits) equals the original one-by-one loop."""

import numpy as np
import pytest

from ift_utils.probing import PromptSpec, letter_token_ids, score_mcqs, score_reference


@pytest.mark.parametrize("mode", ["letter", "cloze"])
@pytest.mark.parametrize("template", ["none", "vicuna", "model"])
def test_fast_equals_reference(tiny, questions, mode, template):
    model, tok = tiny
    spec = PromptSpec(mode=mode, demos=tuple(questions[:2]) if template == "none" else (), subject="geography",
                      template=template)
    fast = score_mcqs(model, tok, questions[2:], spec, max_batch=3, show_progress=False)
    ref = score_reference(model, tok, questions[2:], spec)
    diff = np.abs(np.array(fast.probs.tolist()) - np.array(ref.probs.tolist())).max()
    assert diff < 1e-4
    assert (fast.pred == ref.pred).all()
    assert np.allclose(np.array(fast.probs.tolist()).sum(1), 1.0)


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
