"""Shared by the benchmarks: machine description, data root, result files (JSON + markdown)."""
import json
import os
import platform
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
DATA_ROOT = Path(os.environ.get("ADVQUERY_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def machine() -> str:
    """One line naming the processor, core count, device and torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def write_results(name: str, payload: dict, markdown: str) -> None:
    """Write bench/results/NAME.json and NAME.md, and print the markdown."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    text = f"Machine: {payload['machine']}\n\n{markdown}\n"
    (RESULTS / f"{name}.md").write_text(text)
    print(text)
