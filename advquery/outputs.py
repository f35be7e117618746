"""Which input and settings made each output of a batch, recorded beside the outputs.

``advquery protect`` resumes an interrupted batch by skipping the outputs that exist. A record per
output, in ``OUTDIR/.advquery/outputs/``, tells an output made from this very input (skip it) from
one made from another input file, or from an earlier version of this one (refuse to keep it
silently). Records are JSON files, written atomically after their output.
"""
import hashlib
import json
import os
from pathlib import Path

from .io import OUTPUT_RECORDS, atomic_write, real_path

RECORDS = OUTPUT_RECORDS  # relative to the output folder


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class OutputRecords:
    """The records of the outputs in one output folder."""

    def __init__(self, outdir: Path):
        self.outdir = Path(outdir)

    def _record_path(self, target: Path) -> Path:
        relative = Path(os.path.relpath(target, self.outdir)).as_posix()
        return self.outdir / RECORDS / f"{hashlib.sha256(relative.encode('utf-8', 'surrogateescape')).hexdigest()[:32]}.json"

    def write(self, target: Path, source: Path, settings: dict) -> None:
        """Record that ``source`` with ``settings`` made ``target``."""
        record = {"output": str(target), "input": str(real_path(source)), "input_sha256": file_sha256(source),
                  "settings": settings}
        with atomic_write(self._record_path(target)) as f:
            f.write(json.dumps(record, indent=2).encode())

    def other_source(self, target: Path, source: Path) -> str | None:
        """None when ``target`` was made from ``source`` as it is now (or nothing says otherwise: an output
        without a record, or with an unreadable one), else which input made it."""
        try:
            record = json.loads(self._record_path(target).read_text())
            made_from, digest = record["input"], record["input_sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if digest == file_sha256(source):
            return None
        if made_from == str(real_path(source)):
            return "an earlier version of this file"
        return made_from
