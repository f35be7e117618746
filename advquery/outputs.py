"""Which input and settings made each output of a batch, recorded beside the outputs.

``advquery protect`` resumes an interrupted batch by skipping the outputs that exist. A record per
output, in ``OUTDIR/.advquery/outputs/``, tells an output made from this very input (skip it) from
one made from another input file, or from an earlier version of this one (refuse to keep it
silently). Records are JSON files, written atomically after their output; the records folder is made
before the first output (:meth:`OutputRecords.prepare`), so that an output without a record beside
others is one whose run was killed between writing and recording it (make it again).

Whether a folder keeps records is decided once per run, before any photo (:meth:`OutputRecords.of`): a
folder that holds outputs but no records is an older advquery's, whose outputs are taken as they are, and
no records are started in it (they would make every output it holds an unrecorded one).
"""
import hashlib
import json
import os
from pathlib import Path

from .io import IMAGE_EXTENSIONS, OUTPUT_RECORDS, atomic_write, is_output_folder, real_path


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

    @classmethod
    def of(cls, outdir: Path) -> "OutputRecords | None":
        """The records of the output folder ``outdir`` when it keeps them, else None: to be asked once, before a
        run writes anything. A folder keeps records when it has its records folder, or holds no earlier output
        (no image file) at all; a folder with outputs and no records is an older advquery's."""
        if is_output_folder(outdir):
            return cls(outdir)
        for _root, _dirs, names in os.walk(outdir):  # nothing when it does not exist yet
            if any(os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS for name in names):
                return None
        return cls(outdir)

    def _record_path(self, target: Path) -> Path:
        relative = Path(os.path.relpath(target, self.outdir)).as_posix()
        digest = hashlib.sha256(relative.encode("utf-8", "surrogateescape")).hexdigest()
        return self.outdir / OUTPUT_RECORDS / f"{digest[:32]}.json"

    def prepare(self) -> None:
        """Make the records folder: before writing an output, so that one left without a record is told apart."""
        (self.outdir / OUTPUT_RECORDS).mkdir(parents=True, exist_ok=True)

    def _read(self, target: Path) -> dict | None:
        """The record of ``target``, or None where there is none or it is damaged."""
        try:
            record = json.loads(self._record_path(target).read_text())
        except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
            return None
        if not (isinstance(record, dict) and isinstance(record.get("input"), str)
                and isinstance(record.get("input_sha256"), str)):
            return None
        return record

    def unfinished(self, target: Path) -> bool:
        """Whether the output ``target`` was written but never recorded (its run was killed in between; or its
        record is damaged): it must be made again. Only for a folder that keeps records (:meth:`of`)."""
        return self._read(target) is None

    def write(self, target: Path, source: Path, settings: dict) -> None:
        """Record that ``source`` with ``settings`` made ``target``."""
        record = {"output": str(target), "input": str(real_path(source)), "input_sha256": file_sha256(source),
                  "settings": settings}
        with atomic_write(self._record_path(target)) as f:
            f.write(json.dumps(record, indent=2).encode())

    def other_source(self, target: Path, source: Path) -> str | None:
        """None when ``target`` was made from ``source`` as it is now (or nothing says otherwise: an output
        without a record, or with a damaged one; see :meth:`unfinished`), else which input made it."""
        record = self._read(target)
        if record is None:
            return None
        made_from, digest = record["input"], record["input_sha256"]
        if digest == file_sha256(source):
            return None
        if made_from == str(real_path(source)):
            return "an earlier version of this file"
        return made_from
