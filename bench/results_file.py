"""Where and how the benchmarks write their machine-readable results (bench/results/<name>.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(data: dict[str, Any], path: str | Path) -> Path:
    """Write `data` as indented JSON to `path` (folders made as needed), say so, return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2))
    print(f"wrote {p}")
    return p
