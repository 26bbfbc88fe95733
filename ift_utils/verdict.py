"""The answer-level verdict: the public names of the verdict, from three modules that each hold one concern.

* ``contrasts``: paired contrasts from every scored answer and their standard errors (the crossed replicate ×
  question ANOVA SE with question clusters joined on entity and gold answer, its bootstrap check, the GLMM, the
  paired t over replicates), one row per contrast and test set.
* ``decision``: the decision rule fixed in advance (``decide_by`` in the params; the primary contrast gates Holm
  over the other claim rows), the test against the paper's effect, claim 4's rows, the sensitivity readings that
  decide nothing, and the equal-fit readings.
* ``readings``: the sentence each row says, from its interval and the adjusted p it rests on.

Claim 4's test itself is in ``correlation``. Imports point down: verdict → decision → readings → contrasts →
correlation.
"""

from __future__ import annotations

from .contrasts import (  # noqa: F401
    ALPHA,
    ANSWER_COLUMNS,
    CLAIM_CONTEXTUALIZED,
    CLAIM_GENERAL_VS_NO_IFT,
    CLAIM_HARMONIOUS,
    CLAIM_REPRODUCTION,
    CLAIM_SELF_ALIGNING,
    CONSERVATIVE_SE,
    CONTRASTS,
    PAPER_CONTEXTUALIZED_MEAN,
    PAPER_CONTEXTUALIZED_PER_MODEL,
    PAPER_HARMONIOUS_MINUS_INCOMPATIBLE,
    PAPER_SELF_ALIGNING_MINUS_INCOMPATIBLE,
    PRIMARY,
    QKEY,
    VERDICT_COLUMNS,
    Z_MDE,
    AnswerGlmm,
    Block,
    Contrast,
    _broadcast_untrained,
    _expit,
    _row_names,
    _rows_of,
    answer_verdict,
    bootstrap_contrast,
    clean_answers,
    contrast_blocks,
    contrast_estimate,
    fit_answer_glmm,
    glmm_contrast,
    pair_t_contrast,
    paired_diff_ci,
    question_keys,
    replicate_t_interval,
    shares_questions,
    two_way_anova,
    verdict_row,
)
from .correlation import CLAIM_CONSISTENCY, PAPER_PARTIAL_R, PARTIAL_NOTE, final_epoch  # noqa: F401
from .decision import (  # noqa: F401
    CHECKPOINTS,
    DECIDES,
    FIT_KEYS,
    PAPER_MODELS,
    SCORES,
    SENSITIVITY,
    adjust,
    at_checkpoint,
    correlation_rows,
    equal_fit_epochs,
    equal_fit_verdict,
    holm,
    paper_test,
    sensitivity_verdicts,
    sensitivity_wide,
    study_verdict,
)
from .readings import (  # noqa: F401
    GATE_CLOSED,
    _fmt_p,  # noqa: F401
    fmt_p,
    paper_reading,
    read_row,
)
