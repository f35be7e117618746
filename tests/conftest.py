"""Shared fixtures: the real benchmark data in ../shared/data, skipped with a reason when absent."""
from pathlib import Path

import pytest

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Root of the shared benchmark data (roxford5k-mini, ukbench-mini, ...)."""
    if not (DATA_ROOT / "ukbench-mini").is_dir():
        pytest.skip(f"benchmark data folder {DATA_ROOT} is absent (expects ../shared/data beside the checkout)")
    return DATA_ROOT


@pytest.fixture(scope="session")
def ukbench_dir(data_root: Path) -> Path:
    return data_root / "ukbench-mini" / "jpg"
