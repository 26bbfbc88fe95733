"""Seconds per stage of the smoke and default runs, read from their manifests."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import (
    Row,
)


def e2e_rows(root: Path) -> list[Row]:
    """Seconds per stage of the smoke and default runs, from their manifests ("not run" when absent)."""
    rows = []
    for run in ("smoke", "default"):
        path = root / run / "manifest.json"
        if not path.exists():
            rows.append(Row("end to end", f"{run}", "not run", None, "s"))
            continue
        try:
            stages = json.loads(path.read_text(encoding="utf-8")).get("stages", {})
        except (OSError, json.JSONDecodeError):
            rows.append(Row("end to end", f"{run}", "unreadable manifest", None, "s"))
            continue
        total = 0.0
        for name, st in stages.items():
            secs = st.get("seconds")
            if isinstance(secs, (int, float)):
                total += secs
            rows.append(Row("end to end", f"{run} {name}", secs if secs is not None else st.get("status", "?"),
                            None, "s", st.get("status", "") if st.get("status") != "done" else ""))
        rows.append(Row("end to end", f"{run} total of finished stages", total, None, "s"))
    return rows

