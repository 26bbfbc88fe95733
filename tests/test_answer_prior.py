"""The answer-prior split of stage 04: accuracy on trained / not-trained answers beside no_ift on the same questions,
the difference in differences, and the leave-one-out calibrated answers."""

import numpy as np
import pandas as pd

from ift_utils.records import MCQ
from ift_utils.stages.evaluation import accuracy_by_answer, with_loo


def test_difference_in_differences_by_hand():
    """Group H on 4 questions (2 trained answers: correct 1, 1; 2 others: 1, 0), no_ift on the same (trained: 1, 0;
    others: 0, 0). H − no_ift: trained 1.0 − 0.5 = 0.5, others 0.5 − 0.0 = 0.5, so the difference in differences is
    0.0: H's edge on trained answers is the edge it has everywhere, not an answer prior."""
    ids = [0, 1, 2, 3]
    h = pd.DataFrame({"group": "harmonious", "domain": "d", "test_set": "HOMO", "id": ids,
                      "answer_trained": [True, True, False, False], "correct": [1, 1, 1, 0],
                      "correct_cal": [1, 0, 1, 0], "correct_loo": [1, 1, 0, 0]})
    n = pd.DataFrame({"group": "no_ift", "domain": "d", "test_set": "HOMO", "id": ids, "answer_trained": np.nan,
                      "correct": [1, 0, 0, 0], "correct_cal": [0, 0, 1, 0], "correct_loo": [0, 0, 0, 0]})
    got = accuracy_by_answer(pd.concat([h, n], ignore_index=True)).set_index("answer_trained")
    assert got.loc[True, "accuracy"] == 1.0 and got.loc[True, "no_ift_accuracy"] == 0.5
    assert got.loc[False, "accuracy"] == 0.5 and got.loc[False, "no_ift_accuracy"] == 0.0
    assert (got["did_accuracy"] == 0.0).all()
    # calibrated: H (0.5 − 0.0) − (0.5 − 0.5) = 0.5; leave-one-out: (1.0 − 0.0) − (0.0 − 0.0) = 1.0
    assert np.allclose(got["did_accuracy_cal"], 0.5) and np.allclose(got["did_accuracy_loo"], 1.0)
    assert set(got["group"]) == {"harmonious"}  # no_ift is the reference, not a row


def test_with_loo_marks_leave_one_out_answers():
    """Two questions offering ("x", "y"): q0 p = (0.4, 0.6), q1 p = (0.9, 0.1), gold x for both. q0's prior is q1's
    probabilities (0.9, 0.1): (0.4/0.9, 0.6/0.1) favours y, wrong; q1's prior (0.4, 0.6): (2.25, 0.17), x, right."""
    qs = [MCQ(id=i, question="?", choices=("x", "y"), answer=0) for i in range(2)]
    scored = pd.DataFrame({"id": [0, 1], "probs": [[0.4, 0.6], [0.9, 0.1]]})
    assert with_loo(scored, qs)["correct_loo"].tolist() == [False, True]


def test_split_reads_the_final_weights_only():
    """An early-stop copy with every answer wrong does not enter: the trained-answer accuracy stays 1.0."""
    h = pd.DataFrame({"group": "harmonious", "domain": "d", "test_set": "HOMO", "id": [0, 1],
                      "answer_trained": [True, False], "correct": [1, 0], "final": True})
    early = h.assign(correct=0, final=False)
    got = accuracy_by_answer(pd.concat([h, early], ignore_index=True)).set_index("answer_trained")
    assert got.loc[True, "accuracy"] == 1.0 and got.loc[True, "n"] == 1


def test_scored_frame_to_answer_rows_carries_both_calibrations(tiny, questions):
    """Stage 04's path after scoring: score_mcqs(calibrate) → with_loo → answer_rows gives 0/1 correct, correct_cal
    and correct_loo for every question (the columns the verdict's sensitivity readings use)."""
    from ift_utils.probing import PromptSpec, score_mcqs
    from ift_utils.stages.evaluation import answer_rows
    from ift_utils.stages.grid import Cell

    model, tok = tiny
    scored = score_mcqs(model, tok, questions, PromptSpec(mode="cloze", template="model"), show_progress=False,
                        calibrate=True)
    ft = with_loo(scored, list(questions))
    base = scored[["domain", "id", "probs", "correct"]]
    rows = answer_rows(Cell("geo", "harmonious", "harmonious", float("nan"), 0), "HOMO", base,
                       ft[["domain", "id", "probs", "correct", "correct_cal", "correct_loo"]], "tiny", 1.0)
    assert len(rows) == len(questions)
    for col in ("correct", "correct_cal", "correct_loo"):
        assert set(rows[col]) <= {0, 1}
