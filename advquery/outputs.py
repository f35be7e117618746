"""Which input and settings made each output of a batch, recorded beside the outputs.

``advquery protect`` resumes an interrupted batch by skipping the outputs that exist. A record per
output, in ``OUTDIR/.advquery/outputs/``, tells an output made from this very input (skip it) from
one made from another input file, or from an earlier version of this one (refuse to keep it
silently). Records are JSON files, written atomically: a pending one before the output
(:meth:`OutputRecords.begin`), the whole one after it (:meth:`OutputRecords.write`). An output whose record
is still pending is one whose run was killed between writing and recording it (make it again); an output
without any record in a folder that keeps records is a file advquery did not make (a user's own: keep it
unless told to replace it).

Whether a folder keeps records is decided once per run, before any photo (:meth:`OutputRecords.of`): a
folder that holds outputs but no records is an older advquery's, whose outputs are taken as they are, and
no records are started in it (they would make every output it holds an unrecorded one).
"""
import hashlib
import json
import os
from pathlib import Path

from .io import OUTPUT_RECORDS, atomic_write, is_image_name, is_output_folder, real_path


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
            if any(is_image_name(name) for name in names):
                return None
        return cls(outdir)

    def _record_path(self, target: Path) -> Path:
        relative = Path(os.path.relpath(target, self.outdir)).as_posix()
        digest = hashlib.sha256(relative.encode("utf-8", "surrogateescape")).hexdigest()
        return self.outdir / OUTPUT_RECORDS / f"{digest[:32]}.json"

    def _read(self, target: Path) -> dict | None:
        """The record of ``target``: None where there is none, ``{}`` where it is damaged (unreadable,
        unparsable, nested too deeply, wrong fields), else the record (pending or whole)."""
        path = self._record_path(target)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
            return {}
        if not (isinstance(record, dict) and isinstance(record.get("input"), str)
                and (record.get("pending") is True or isinstance(record.get("input_sha256"), str))):
            return {}
        return record

    def existing(self, target: Path, source: Path) -> str:
        """What the existing output ``target`` is to the input ``source``, from one reading of its record:
        ``"unrecorded"`` (no record: advquery did not make it), ``"unfinished"`` (its record is pending, its run
        killed before it could finish, or damaged: it must be made again), ``"same"`` (made from ``source`` as it
        is now), else which input made it (``"an earlier version of this file"`` where ``source`` has changed)."""
        record = self._read(target)
        if record is None:
            return "unrecorded"
        if not record or record.get("pending") is True:
            return "unfinished"
        if record["input_sha256"] == file_sha256(source):
            return "same"
        if record["input"] == str(real_path(source)):
            return "an earlier version of this file"
        return record["input"]

    def begin(self, target: Path, source: Path) -> None:
        """Record, before writing it, that ``target`` is being made from ``source``: until :meth:`write`
        replaces this pending record, the output is unfinished."""
        self._save(target, {"output": str(target), "input": str(real_path(source)), "pending": True})

    def write(self, target: Path, source: Path, settings: dict) -> None:
        """Record that ``source`` with ``settings`` made ``target``."""
        self._save(target, {"output": str(target), "input": str(real_path(source)),
                            "input_sha256": file_sha256(source), "settings": settings})

    def _save(self, target: Path, record: dict) -> None:
        with atomic_write(self._record_path(target)) as f:  # makes the records folder with the first record
            f.write(json.dumps(record, indent=2).encode())
