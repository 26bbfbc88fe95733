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
    from ift_utils.probing import CONTENT_FREE, _content_free_set, content_free

    qs = _facts_questions()
    assert CONTENT_FREE == ("N/A", "", "[MASK]")
    assert content_free(qs[0]).question == "In which country is the city of N/A?"
    assert content_free(qs[0], "[MASK]").question == "In which country is the city of [MASK]?"
    assert content_free(qs[0]).choices == qs[0].choices and content_free(qs[-1]).question == "N/A"
    items, index = _content_free_set(qs, "cloze")
    assert len(items) == 6  # one context per distinct content-free prompt (2 kinds x 3 fillers), options as suffixes
    assert set(items[0].choices) == {c for q in qs[:6] for c in q.choices} and len(set(items[0].choices)) == 9
    assert [len(f) for f in index[1]] == [4, 4, 4]
    for per_filler, filler in zip(index[1], CONTENT_FREE, strict=True):
        k = per_filler[0][0]
        assert items[k].question == f"In which country is the city of {filler}?"
        assert [items[k].choices[i] for kk, i in per_filler] == list(qs[1].choices)
    assert len(_content_free_set(qs, "letter")[0]) == 12  # letter mode: one per distinct option list and filler


def test_pmi_two_token_answer_by_hand():
    """A two-token option A (token probabilities 0.2 and 0.5: p = 0.1) against a one-token option B (p = 0.3).
    Content-free (summed) probabilities of (A, B) under "N/A", "" and "[MASK]": (0.05, 0.15), (0.02, 0.18),
    (0.04, 0.04), i.e. over the options (0.25, 0.75), (0.10, 0.90), (0.50, 0.50); their mean p_cf = (0.28333,
    0.71667). PMI: 0.1 / 0.28333 = 0.35294 and 0.3 / 0.71667 = 0.41860, renormalized (0.45745, 0.54255). The old
    per-token-mean calibration with "N/A" alone gave A sqrt(0.1)/sqrt(0.05) = 1.414 against B 2.0, i.e. 0.41421."""
    from ift_utils.probing import pmi_calibrated

    logp = np.log([0.2 * 0.5, 0.3])
    cf = np.log([[0.05, 0.15], [0.02, 0.18], [0.04, 0.04]])
    prior, cal = pmi_calibrated(logp, cf)
    assert prior == pytest.approx([0.283333, 0.716667], abs=1e-6)
    assert cal == pytest.approx([0.457447, 0.542553], abs=1e-6)
    shifted = cf + np.array([[1.0], [-2.0], [0.5]])  # a constant per prompt (raw letter logits) changes nothing
    assert pmi_calibrated(logp + 3.0, shifted)[1] == pytest.approx(cal, abs=1e-12)


def _summed_logp(model, ids: list[int], n: int) -> float:
    """Sum of the log-probabilities of the last `n` ids of `ids`, one token at a time, from one forward pass."""
    import torch

    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    return sum(logp[len(ids) - n - 1 + j, ids[len(ids) - n + j]].item() for j in range(n))


@pytest.mark.parametrize("template", ["none", "vicuna"])
def test_calibrated_multi_token_by_hand(tiny, template):
    """Cloze options of one, two and three tokens: probs_cal equals the PMI computed here token by token on the
    prompt and on the three content-free prompts (summed log-probs, content-free distributions averaged)."""
    from ift_utils.probing import CONTENT_FREE, content_free

    model, tok = tiny
    qs = _facts_questions()
    q = qs[3]
    spec = PromptSpec(mode="cloze", demos=tuple(qs[:2]) if template == "none" else (), subject="geography",
                      template=template)
    rows = encode_question(tok, q, spec)
    assert {len(s) for _, s in rows} & {2, 3}, "the test needs a multi-token option"
    logp = np.array([_summed_logp(model, c + s, len(s)) for c, s in rows])
    cf = []
    for filler in CONTENT_FREE:
        cf_rows = encode_question(tok, content_free(q, filler), spec)
        x = np.array([_summed_logp(model, c + s, len(s)) for c, s in cf_rows])
        cf.append(np.exp(x - x.max()) / np.exp(x - x.max()).sum())
    prior = np.mean(cf, axis=0)
    want = np.exp(logp - np.log(prior)) / np.exp(logp - np.log(prior)).sum()
    for two_level in (True, False):
        got = score_mcqs(model, tok, qs[2:5], spec, show_progress=False, calibrate=True, two_level=two_level)
        assert np.allclose(got.probs_cf.iloc[1], prior, atol=1e-5)
        assert np.allclose(got.probs_cal.iloc[1], want, atol=1e-5)


@pytest.mark.parametrize("two_level", [True, False])
@pytest.mark.parametrize(("mode", "template"), [("letter", "none"), ("letter", "vicuna")])
def test_calibrated_equals_hand_computed(tiny, mode, template, two_level):
    """probs_cal = p(option | prompt) / p_cf(option), renormalized, with p_cf the mean of the reference loop's
    distributions on the three content-free copies (letter mode: one scored token, so the reference loop's
    distributions are the ones to use; cloze sums over tokens: test_calibrated_multi_token_by_hand, both scorers)."""
    from ift_utils.probing import CONTENT_FREE, calibrated, content_free

    model, tok = tiny
    qs = _facts_questions()
    spec = PromptSpec(mode=mode, demos=tuple(qs[:2]) if template == "none" else (), subject="geography",
                      template=template)
    fast = score_mcqs(model, tok, qs[2:], spec, max_batch=3, show_progress=False, two_level=two_level,
                      calibrate=True)
    ref = score_reference(model, tok, qs[2:], spec)
    assert np.abs(_probs(fast) - _probs(ref)).max() < 1e-5

    prompt = [np.log(p) for p in ref.probs]
    cfs = [[np.asarray(p) for p in score_reference(model, tok, [content_free(q, f) for q in qs[2:]], spec).probs]
           for f in CONTENT_FREE]
    for row, lp, q, i in zip(fast.itertuples(), prompt, qs[2:], range(len(qs) - 2), strict=True):
        prior = np.mean([c[i] for c in cfs], axis=0)
        assert np.allclose(row.probs_cf, prior, atol=1e-5)
        want = calibrated(np.exp(lp), prior)
        assert np.allclose(row.probs_cal, want, atol=1e-5)
        assert row.pred_cal == int(np.argmax(want)) and row.correct_cal == (row.pred_cal == q.answer)
        assert row.confidence_cal == pytest.approx(max(want))
    assert "probs_cal" not in score_mcqs(model, tok, qs[2:], spec, show_progress=False).columns


def test_loo_prior_by_hand():
    """Leave-one-out answer prior. Three questions offer "x": with p(x) = 0.6, 0.2, 0.4, question 1's prior for "x"
    is (0.2 + 0.4) / 2 = 0.3; its "y" (offered by question 2 with 0.8) has prior 0.8; so question 1 calibrated is
    (0.6 / 0.3, 0.4 / 0.8) = (2, 0.5) -> (0.8, 0.2). An option nobody else offers ("z", question 3) takes the
    geometric mean of its question's other priors: "x" prior (0.6 + 0.2) / 2 = 0.4, so (0.4/0.4, 0.6/0.4) -> (0.4,
    0.6), the raw probabilities."""
    from ift_utils.probing import loo_calibrated

    got = loo_calibrated([[0.6, 0.4], [0.2, 0.8], [0.4, 0.6]], [("x", "y"), ("x", "y"), ("x", "z")])
    assert got[0] == pytest.approx([0.8, 0.2])
    # question 2: x prior (0.6 + 0.4) / 2 = 0.5, y prior 0.4: (0.4, 2.0) -> (1/6, 5/6)
    assert got[1] == pytest.approx([1 / 6, 5 / 6])
    assert got[2] == pytest.approx([0.4, 0.6])
    assert loo_calibrated([[0.3, 0.7]], [("a", "b")])[0] == pytest.approx([0.3, 0.7])
