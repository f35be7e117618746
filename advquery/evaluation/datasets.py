"""Retrieval benchmarks as image paths plus ground truth (revisitop, classic Oxford5k, UKBench, own folders).

Every loader returns a :class:`RetrievalDataset` whose ``gnd`` holds, per query, index lists into
``images``: keys easy/hard/junk for revisited-style datasets, good/ok/junk for classic Oxford5k.
:meth:`RetrievalDataset.ground_truth` turns them into the ``{'ok', 'junk'}`` lists that
:func:`~advquery.evaluation.metrics.compute_map` scores.
"""
import json
import math
import pickle
import re
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from ..io import IMAGE_EXTENSIONS
from .metrics import protocol_gnd

DATASET_NAMES = ("roxford5k-mini", "roxford5k-mini-ext", "ukbench-mini", "roxford5k", "rparis6k", "oxford5k")
REVISITED_PROTOCOLS = ("easy", "medium", "hard")
_INDEX_KEYS = ("easy", "hard", "junk", "good", "ok")

Box = tuple[float, float, float, float]


class DatasetError(ValueError):
    """A dataset is missing, incomplete or malformed; the message names the expected layout."""


@dataclass(frozen=True)
class RetrievalDataset:
    """Database images, query images and ground truth of one benchmark.

    Attributes:
        name: dataset name (the folder name for a one-folder-per-group dataset).
        root: folder the files were found in.
        images: database image paths; ground-truth indices refer to this list.
        queries: query image paths (for some datasets also database images).
        query_boxes: per query the crop (x1, y1, x2, y2) in pixels of the full image, or None
            for a whole-image query.
        gnd: per query the raw ground truth, index lists into ``images`` under keys
            easy/hard/junk (revisited-style) or good/ok/junk (classic).
        protocols: protocols valid for ``gnd`` ('easy', 'medium', 'hard' or 'classic').
        notes: what the loader dropped or assumed, for reports.
    """

    name: str
    root: Path
    images: list[Path]
    queries: list[Path]
    query_boxes: list[Box | None]
    gnd: list[dict]
    protocols: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def query_names(self) -> list[str]:
        """File stems of the queries."""
        return [q.stem for q in self.queries]

    def ground_truth(self, protocol: str) -> list[dict]:
        """Per-query ``{'ok', 'junk'}`` index lists for one of ``protocols``."""
        if protocol not in self.protocols:
            raise ValueError(f"dataset {self.name!r} supports protocols {self.protocols}, got {protocol!r}")
        return protocol_gnd(self.gnd, protocol)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: ground-truth files hold "
                                     "only dicts, lists, tuples, numbers and strings")


def load_gnd_file(path: str | Path) -> dict:
    """Read a revisitop ground-truth file (``gnd_*.pkl`` or its ``.json`` twin).

    The pickle is read by an unpickler that refuses every global (no class, function or numpy
    array can be loaded), so a malicious file is refused instead of running code. The official
    revisitop files and those in shared/data hold only plain dicts, lists, numbers and strings.

    Two JSON layouts are accepted: the revisitop one ``{imlist, qimlist, gnd: [{bbx, easy, ...}]}``
    and the extended-query one ``{imlist, queries: [{query, easy, hard, junk}]}``.

    Returns:
        ``{'imlist': [str], 'qimlist': [str], 'gnd': [dict]}``; each gnd dict has the index
        keys present among easy/hard/junk/good/ok as lists of int, and ``'bbx'`` as a tuple of
        4 floats or None. Other keys are dropped.

    Raises:
        DatasetError: ``"PATH: what is wrong"`` for a file that cannot be read, is refused (a global in
            the pickle), is truncated or malformed, or holds values of the wrong type.
    """
    path = Path(path)
    is_json = path.suffix == ".json"
    try:
        if is_json:
            raw = json.loads(path.read_text())
        else:
            with path.open("rb") as f:
                raw = _RestrictedUnpickler(f).load()
    except pickle.UnpicklingError as exc:
        raise DatasetError(f"{path}: refused or damaged pickle ({exc})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except RecursionError:  # JSON arrays or objects nested thousands deep
        raise DatasetError(f"{path}: not valid JSON (nested too deeply)" if is_json else
                           f"{path}: damaged pickle (nested too deeply)") from None
    except ValueError as exc:  # JSON: JSONDecodeError, UnicodeDecodeError; pickle: unsupported protocol, bad UTF-8
        if is_json:
            raise DatasetError(f"{path}: not valid JSON ({exc})") from None
        raise DatasetError(f"{path}: damaged pickle ({type(exc).__name__}: {exc})") from None
    except (EOFError, TypeError, IndexError, KeyError, OverflowError, MemoryError) as exc:  # damaged pickle data
        raise DatasetError(f"{path}: damaged pickle ({type(exc).__name__}: {exc})") from None
    if is_json and isinstance(raw, dict) and "queries" in raw and "gnd" not in raw:  # the extended-query layout
        queries = raw["queries"]
        if not (isinstance(queries, list) and all(isinstance(q, dict) and "query" in q for q in queries)):
            raise DatasetError(f"{path}: 'queries' must be a list of objects with a 'query' name, found "
                               f"{_short(queries)}")
        raw = {"imlist": raw.get("imlist"), "qimlist": [q["query"] for q in queries], "gnd": queries}
    missing = [k for k in ("imlist", "qimlist", "gnd") if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise DatasetError(f"{path}: not a revisitop ground-truth file, missing {missing}")
    return _checked_gnd(path, raw)


def _checked_gnd(path: Path, raw: dict) -> dict:
    """The ground truth of ``raw`` with every value's type and range checked."""
    def fail(what: str, value: object) -> DatasetError:
        return DatasetError(f"{path}: {what}, found {_short(value)}")

    for key in ("imlist", "qimlist"):
        if not (isinstance(raw[key], list) and all(isinstance(x, str) for x in raw[key])):
            raise fail(f"{key!r} must be a list of image names", raw[key])
    if not isinstance(raw["gnd"], list):
        raise fail("'gnd' must be a list with one entry per query", raw["gnd"])
    if len(raw["gnd"]) != len(raw["qimlist"]):
        raise DatasetError(f"{path}: {len(raw['qimlist'])} queries but {len(raw['gnd'])} ground-truth entries")
    n_db = len(raw["imlist"])
    gnd = []
    for i, g in enumerate(raw["gnd"]):
        if not isinstance(g, dict):
            raise fail(f"query {i}: expected an object with index lists", g)
        entry = {}
        for k in _INDEX_KEYS:
            if k in g:
                if not (isinstance(g[k], list) and all(isinstance(x, int) and not isinstance(x, bool) for x in g[k])):
                    raise fail(f"query {i}: {k!r} must be a list of image indices", g[k])
                entry[k] = list(g[k])
        bad = [x for v in entry.values() for x in v if not 0 <= x < n_db]
        if bad:
            raise DatasetError(f"{path}: query {i} refers to images {bad[:5]} outside imlist (size {n_db})")
        box = g.get("bbx")
        if box is not None and not (isinstance(box, (list, tuple)) and len(box) == 4 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in box)):
            raise fail(f"query {i}: 'bbx' must be 4 numbers (x1, y1, x2, y2) or null", box)
        entry["bbx"] = None if box is None else tuple(float(x) for x in box)
        gnd.append(entry)
    return {"imlist": list(raw["imlist"]), "qimlist": list(raw["qimlist"]), "gnd": gnd}


def _short(value: object, limit: int = 60) -> str:
    try:
        text = repr(value)
    except RecursionError:  # lists nested thousands deep (a pickle can hold them)
        return f"a {type(value).__name__} nested too deeply"
    return text if len(text) <= limit else text[:limit] + "..."


def load_dataset(name: str | Path, data_root: str | Path | None = None) -> RetrievalDataset:
    """Load a benchmark by name from ``data_root``, or a one-folder-per-group directory.

    Names (layouts under ``data_root``):
        - ``roxford5k-mini``: ``roxford5k-mini/jpg/NAME.jpg`` and ``gnd_roxford5k-mini.pkl`` (or
          ``.json``); queries are cropped to their box.
        - ``roxford5k-mini-ext``: same images, ``gnd_roxford5k-mini-ext.json``; whole-image queries
          that are database images.
        - ``ukbench-mini``: ``ukbench-mini/jpg/ukbenchNNNNN.jpg``; every image is a query, positives
          are the other images of its group (number // 4), junk the image itself.
        - ``roxford5k``, ``rparis6k``: cirtorch layout ``NAME/jpg/*.jpg`` and ``NAME/gnd_NAME.pkl``
          (also under ``test/NAME``); the gnd falls back to ``revisitop-gnd/gnd_NAME.pkl``.
        - ``oxford5k``: classic Oxford5k, ``oxford5k/jpg/*.jpg`` with the ground-truth text files in
          ``oxford5k/gt`` or ``oxford5k-classic-gt``; protocol 'classic'. The database is every image
          in the folder, so a subset works: absent images leave the ground truth, queries whose
          image is absent are dropped (counted in ``notes``).
        - any other existing directory (as given, or under ``data_root``): ``DIR/<group>/<images>``;
          every image is a query, positives are the other images of its group, junk itself.

    In revisitop-style ground truth an image listed both as positive (easy/hard) and as junk of
    one query is kept as a positive only (reported in ``notes``): the reference scoring would
    count it as a hit and also as removed junk, so a perfect ranking could score AP > 1. Only
    ``gnd_roxford5k-mini-ext.json`` has such entries.

    Raises:
        DatasetError: unknown name, missing folder or file (the message gives the expected layout).
    """
    if str(name) in DATASET_NAMES:
        if data_root is None:
            raise DatasetError(f"dataset {name!r} needs data_root, the folder that holds {name}/")
        return _LOADERS[str(name)](Path(data_root))
    for candidate in (Path(name).expanduser(), None if data_root is None else Path(data_root) / name):
        if candidate is not None and candidate.is_dir():
            return _load_group_folders(candidate)
    raise DatasetError(f"unknown dataset {str(name)!r}: expected one of {', '.join(DATASET_NAMES)}, "
                       "or a directory with one sub-folder of images per group (DIR/<group>/<images>)")


def load_distractors(path: str | Path, data_root: str | Path | None = None) -> list[Path]:
    """The images of a distractor list in the revisitop1m.txt format: one image path per line, relative to
    ``data_root`` (or absolute); blank lines are ignored. They are added to a dataset's database by
    :func:`~advquery.evaluation.runner.evaluate` (e.g. ROxford+1M and RParis+1M, as published).

    Raises:
        DatasetError: ``"PATH: what is wrong"`` for a list that cannot be read, holds no path, has relative
            paths without ``data_root``, or names files that are missing (counted, the first few named).
    """
    path = Path(path)
    try:
        names = [line for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the distractor list ({exc.strerror or exc})") from None
    except ValueError as exc:  # not text
        raise DatasetError(f"{path}: not a text list of image paths ({exc})") from None
    if not names:
        raise DatasetError(f"{path}: the distractor list holds no image path (expected one per line)")
    relative = [n for n in names if not Path(n).is_absolute()]
    if relative and data_root is None:
        raise DatasetError(f"{path}: {len(relative)} distractor paths are relative (e.g. {relative[0]!r}) and no "
                           "data root was given to find them under")
    images = [Path(n) if Path(n).is_absolute() else Path(data_root) / n for n in names]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise DatasetError(f"{path}: {len(missing)} of the {len(images)} listed distractors are missing or not files, "
                           f"e.g. {missing[:3]}")
    return images


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _image_paths(jpg: Path, names: list[str], what: str) -> list[Path]:
    paths = [jpg / f"{n}.jpg" for n in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} {what} listed in the ground truth are missing from {jpg}, "
                           f"e.g. {missing[:3]}")
    return paths


def _revisited(name: str, root: Path, gnd_path: Path, crop: bool) -> RetrievalDataset:
    """Revisitop layout. An image listed as positive (easy or hard) and as junk of the same query
    is kept as a positive only: the reference scoring would count it twice and can exceed AP 1."""
    data = load_gnd_file(gnd_path)
    jpg = root / "jpg"
    gnd, n_overlap, n_queries = [], 0, 0
    for g in data["gnd"]:
        entry = {k: g[k] for k in ("easy", "hard", "junk") if k in g}
        positives = set(entry.get("easy", [])) | set(entry.get("hard", []))
        if "junk" in entry and positives.intersection(entry["junk"]):
            n_queries += 1
            n_overlap += len(positives.intersection(entry["junk"]))
            entry["junk"] = [j for j in entry["junk"] if j not in positives]
        gnd.append(entry)
    notes = (f"{gnd_path.name}: {n_overlap} images listed both as positive and as junk in {n_queries} "
             "queries were kept as positives only",) if n_overlap else ()
    return RetrievalDataset(
        name=name, root=root,
        images=_image_paths(jpg, data["imlist"], "database images"),
        queries=_image_paths(jpg, data["qimlist"], "query images"),
        query_boxes=[g["bbx"] if crop else None for g in data["gnd"]],
        gnd=gnd, protocols=REVISITED_PROTOCOLS, notes=notes)


def _load_roxford5k_mini(data_root: Path, ext: bool = False) -> RetrievalDataset:
    root = data_root / "roxford5k-mini"
    if ext:
        gnd_path = root / "gnd_roxford5k-mini-ext.json"
        candidates = [gnd_path]
    else:
        candidates = [root / "gnd_roxford5k-mini.pkl", root / "gnd_roxford5k-mini.json"]
        gnd_path = next((p for p in candidates if p.is_file()), candidates[0])
    if not (root / "jpg").is_dir() or not gnd_path.is_file():
        name = "roxford5k-mini-ext" if ext else "roxford5k-mini"
        raise DatasetError(f"{name} not found under {data_root}: expected {root / 'jpg'}/*.jpg and "
                           f"{' or '.join(str(p) for p in candidates)}")
    return _revisited("roxford5k-mini-ext" if ext else "roxford5k-mini", root, gnd_path, crop=not ext)


def _load_full_revisited(name: str, data_root: Path) -> RetrievalDataset:
    roots = [data_root / name, data_root / "test" / name]
    root = next((r for r in roots if (r / "jpg").is_dir()), None)
    gnd_paths = [r / f"gnd_{name}.pkl" for r in roots] + [data_root / "revisitop-gnd" / f"gnd_{name}.pkl"]
    gnd_path = next((p for p in gnd_paths if p.is_file()), None)
    if root is None or gnd_path is None:
        raise DatasetError(f"{name} not found under {data_root}: expected {roots[0] / 'jpg'}/*.jpg "
                           f"(or {roots[1] / 'jpg'}/*.jpg) and {gnd_paths[0]} (or {gnd_paths[-1]})")
    return _revisited(name, root, gnd_path, crop=True)


def _self_excluding_groups(name: str, root: Path, images: list[Path], groups: list) -> RetrievalDataset:
    """Every image a whole-image query: positives = its group-mates, junk = itself.

    Positives are stored as 'easy' with no 'hard' ones, so only the 'medium' protocol (all
    positives) is offered: 'easy' would be the same and 'hard' empty.
    """
    members = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    gnd = [{"easy": [j for j in members[g] if j != i], "hard": [], "junk": [i]} for i, g in enumerate(groups)]
    return RetrievalDataset(name=name, root=root, images=images, queries=list(images),
                            query_boxes=[None] * len(images), gnd=gnd, protocols=("medium",))


def _load_ukbench_mini(data_root: Path) -> RetrievalDataset:
    jpg = data_root / "ukbench-mini" / "jpg"
    images = _list_images(jpg) if jpg.is_dir() else []
    if not images:
        raise DatasetError(f"ukbench-mini not found under {data_root}: expected {jpg}/ukbench00000.jpg ...")
    numbers = [re.search(r"(\d+)$", p.stem) for p in images]
    if not all(numbers):
        bad = [p.name for p, m in zip(images, numbers) if not m]
        raise DatasetError(f"UKBench image names must end in their number (ukbench00000.jpg), got {bad[:3]}")
    return _self_excluding_groups("ukbench-mini", jpg.parent, images, [int(m.group(1)) // 4 for m in numbers])


def _load_group_folders(folder: Path) -> RetrievalDataset:
    groups = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    images, labels = [], []
    for d in groups:
        found = _list_images(d)
        images += found
        labels += [d.name] * len(found)
    if not images:
        raise DatasetError(f"no images found in {folder}: expected one sub-folder of images per group, "
                           f"{folder}/<group>/<image>{{{','.join(sorted(IMAGE_EXTENSIONS))}}}")
    ds = _self_excluding_groups(folder.name, folder, images, labels)
    notes = []
    if loose := len(_list_images(folder)):
        notes.append(f"ignored {loose} images directly in {folder} (not in a group folder)")
    if singles := sum(not g["easy"] for g in ds.gnd):
        notes.append(f"{singles} images are alone in their group: as queries they have no positive and are skipped")
    return replace(ds, notes=tuple(notes))


def _read_words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except (OSError, ValueError) as exc:  # ValueError: not text (UnicodeDecodeError)
        raise DatasetError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None


def _read_names(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"classic ground truth incomplete: {path} is missing")
    return _read_words(path)


def _query_line(path: Path) -> tuple[str, tuple[float, ...]]:
    """The query image name and box of a classic ``*_query.txt`` file (``NAME x1 y1 x2 y2``)."""
    words = _read_words(path)
    try:
        box = tuple(float(x) for x in words[1:])
    except ValueError:
        box = ()
    if len(words) != 5 or len(box) != 4 or not all(map(math.isfinite, box)):
        raise DatasetError(f"{path}: expected one line 'NAME x1 y1 x2 y2', found {_short(' '.join(words))}")
    return words[0], box


def _load_oxford5k(data_root: Path) -> RetrievalDataset:
    root = data_root / "oxford5k"
    gt_dirs = [root / "gt", data_root / "oxford5k-classic-gt"]
    gt = next((d for d in gt_dirs if d.is_dir()), None)
    if not (root / "jpg").is_dir() or gt is None:
        raise DatasetError(f"oxford5k not found under {data_root}: expected {root / 'jpg'}/*.jpg and the "
                           f"classic ground truth (*_query.txt, *_good.txt, *_ok.txt, *_junk.txt) in "
                           f"{gt_dirs[0]} or {gt_dirs[1]}")
    images = _list_images(root / "jpg")
    index = {p.stem: i for i, p in enumerate(images)}
    query_files = sorted(gt.glob("*_query.txt"))
    if not query_files:
        raise DatasetError(f"no *_query.txt files in {gt}")
    queries, boxes, gnd, dropped = [], [], [], []
    for qf in query_files:
        qname, box = _query_line(qf)
        qname = qname.removeprefix("oxc1_")
        if qname not in index:
            dropped.append(qname)
            continue
        base = qf.name.removesuffix("_query.txt")
        queries.append(images[index[qname]])
        boxes.append(box)
        gnd.append({k: [index[n] for n in _read_names(gt / f"{base}_{k}.txt") if n in index]
                    for k in ("good", "ok", "junk")})
    notes = (f"dropped {len(dropped)} of {len(query_files)} queries whose image is not in {root / 'jpg'}: "
             f"{', '.join(dropped)}",) if dropped else ()
    return RetrievalDataset(name="oxford5k", root=root, images=images, queries=queries, query_boxes=boxes,
                            gnd=gnd, protocols=("classic",), notes=notes)


_LOADERS = {
    "roxford5k-mini": _load_roxford5k_mini,
    "roxford5k-mini-ext": lambda root: _load_roxford5k_mini(root, ext=True),
    "ukbench-mini": _load_ukbench_mini,
    "roxford5k": lambda root: _load_full_revisited("roxford5k", root),
    "rparis6k": lambda root: _load_full_revisited("rparis6k", root),
    "oxford5k": _load_oxford5k,
}
