"""Where and with what a benchmark ran: the CPU's name (the code version is engine.trial.code_version)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def script_provenance(device: str, threads: int, **extra) -> dict:
    """The provenance block of a standalone throughput script's JSON (bench.run writes its own, richer one)."""
    import os
    from datetime import UTC, datetime

    import torch

    from engine.trial import code_version

    return {
        "torch": torch.__version__,
        "device": device if device != "cpu" else f"cpu: {cpu_name()}",
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        **extra,
        "git_describe": code_version(),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_json(path: Path, result: dict) -> None:
    """Write `result` to `path` through a temporary file, so a killed benchmark leaves the old file intact."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")
