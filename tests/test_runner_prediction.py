"""The runner says a study's predicted primary MDE and wall time before its first stage, for any params file,
without importing torch (no notebook is executed here: nothing is trained or scored)."""

import os
import subprocess
import sys

import pytest

from ift_utils.config import PROJECT_ROOT

DRIVER = """
import sys
import ift_utils.run as run
run.run_stage = lambda *a, **k: None  # no notebook runs: only the runner's own lines
code = run.main([sys.argv[1], "-p", f"output_root={sys.argv[2]}", "-p", "run_name=predicted", "--quiet",
                 "--stages", "05"])
print("torch imported" if "torch" in sys.modules else "torch not imported")
sys.exit(code)
"""


@pytest.mark.parametrize(("params", "line"), [
    ("params/default.yaml", "prediction: primary MDE 17.0 points (harmonious − incompatible on HOMO, raw scoring; "
                            "2 domains × 2 replicates × 100 questions, 38 answer clusters a domain); wall time 55 min"),
    ("params/power.yaml", "prediction: primary MDE 5.6 points (harmonious − incompatible on HOMO, calibrated "
                          "scoring; 2 domains × 3 replicates × 1000 questions, 82 answer clusters a domain); wall "
                          "time 1 h 00 min"),
])
def test_runner_prints_the_prediction_before_it_starts(tmp_path, params, line):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-c", DRIVER, params, str(tmp_path)], cwd=PROJECT_ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("torch not imported")
    lines = r.stderr.splitlines()
    said = [i for i, text in enumerate(lines) if text.startswith("prediction: ")]
    assert said and lines[said[0]].startswith(line), r.stderr
    assert "on the reference machine (probe " in lines[said[0]]
    assert said[0] == 1 and lines[0].startswith("run predicted: ")  # right after the run's first line
    assert line.split(";")[0] in (tmp_path / "predicted" / "run.log").read_text()
