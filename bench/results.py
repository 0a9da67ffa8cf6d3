"""What every benchmark records beside its timings, and how it hands them over."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def start_results(**fields: Any) -> dict[str, Any]:
    """The results dict, with the machine's load at the start: other work skews timings here."""
    return {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), **fields}


def finish_results(results: dict[str, Any], out: str | None) -> int:
    """Records the load at the end, prints the results as JSON and writes them to `out` if given."""
    results["loadavg_end"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return 0
