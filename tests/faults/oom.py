# Fault injection, copied by the test into an IPYTHONDIR startup folder so that it runs in the notebook
# kernel only: the verdict's computation in stage 05 is killed with SIGKILL, as the operating system's
# out-of-memory killer does.
import os
import signal

import ift_utils.stages.analysis


def _killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


ift_utils.stages.analysis.verdicts = _killed  # notebook 05 calls stage.verdicts for the verdict
