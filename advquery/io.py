"""Safe image input and output.

Reading decodes a user's photo into an upright 8-bit RGB array (plus its alpha channel, if
any) or raises :class:`ImageError`, whose message is one line ``"PATH: reason"``; no PIL
traceback escapes. Writing is atomic: a temporary file in the target folder, then
``os.replace``, so an interrupted run never leaves a half-written file behind. Temporary files
are named ``.NAME.advquery-PID-XXXX.tmp``: one left by a killed process (its PID no longer runs)
is removed by :func:`remove_stale_temporaries`. :func:`claim` lets concurrent processes split
work on the same outputs.

Pixel conventions: numpy images are ``(H, W, 3) uint8`` in grey levels 0-255; tensors are
``(1, 3, H, W) float32`` in [0, 1] (1 grey level = 1/255).
"""
from __future__ import annotations

import errno
import fcntl
import glob
import math
import os
import re
import secrets
import stat
import struct
import threading
import warnings
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "OUTPUT_RECORDS", "ImageError", "InputFile", "Photo", "atomic_write",
    "claim", "collect_inputs", "format_for_suffix", "image_format", "is_inside", "is_output_folder", "jpeg_subsampling",
    "printable", "read_photo", "real_path", "remove_stale_temporaries", "suffix_for_format", "to_tensor", "to_uint8",
    "write_grey_atomic", "write_photo_atomic",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
DEFAULT_MAX_PIXELS = 100_000_000

_FORMAT_FOR_SUFFIX = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP",
                      ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}
_SUFFIX_FOR_FORMAT = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}
_GREY_FORMATS = frozenset({"PNG", "JPEG", "TIFF"})  # store grey (with alpha: PNG, TIFF); BMP has no grey + alpha
_FORMAT_ALIASES = {"JPG": "JPEG", "MPO": "JPEG", "TIF": "TIFF"}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ORIENTATION = ExifTags.Base.Orientation
_GPS_IFD = ExifTags.IFD.GPSInfo
_GLOB_MAGIC = re.compile(r"[*?[]")
# PIL reads its decompression-bomb limit from a module global; serialise our temporary changes.
_PIL_LIMIT_LOCK = threading.Lock()
# Errors PIL plugins raise on damaged data (struct.error and EOFError come from header parsing).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
# Temporary files of atomic writes: the PID tells a killed process's leftovers from a running one's.
_TEMPORARY = re.compile(r"^\..*\.advquery-(\d+)-[^.]+\.tmp$")
_CLAIM = re.compile(r"^\..*\.advquery-claim$")  # claims on outputs (see claim)
# Where ``advquery protect`` records which input made each output (advquery.outputs): a folder holding it is an
# output folder, which collect_inputs can leave out of the folders it descends into.
OUTPUT_RECORDS = Path(".advquery") / "outputs"


def printable(text: object) -> str:
    """``text`` on one printable line: newlines, other control characters, line separators and
    undecodable bytes of a file name are shown as Python escapes (``\\n``, ``\\u2028``, ``\\udcff``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


class ImageError(ValueError):
    """An input that cannot be used as a photo; ``str()`` is the one line ``"PATH: reason"``."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(str(path), " ".join(str(reason).split()))  # reason on one line

    @property
    def path(self) -> str:
        return self.args[0]

    @property
    def reason(self) -> str:
        return self.args[1]

    def __str__(self) -> str:
        return f"{self.args[0]}: {self.args[1]}"


@dataclass(frozen=True, eq=False)
class Photo:
    """A decoded, upright photo.

    Attributes:
        path: the file it was read from.
        rgb: ``(H, W, 3) uint8`` pixels, EXIF orientation applied.
        alpha: ``(H, W) uint8`` alpha channel as stored, or None for opaque formats.
        format: PIL format name of the file (``'JPEG'``, ``'PNG'``, ...; camera MPO files
            report ``'JPEG'``).
        exif: EXIF block for re-saving (orientation set to 1 because ``rgb`` is upright, GPS
            IFD removed), or None.
        icc_profile: the embedded ICC profile when it describes RGB data, else None (a CMYK or
            grey profile does not apply to the converted ``rgb``).
    """

    path: Path
    rgb: np.ndarray
    alpha: np.ndarray | None
    format: str
    exif: bytes | None
    icc_profile: bytes | None

    @property
    def size(self) -> tuple[int, int]:
        """``(W, H)`` in pixels, as PIL reports sizes."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])


@dataclass(frozen=True)
class InputFile:
    """An input image file and its path relative to the input root (file name, folder or glob base)."""

    path: Path
    relative: Path


# ----------------------------------------------------------------------------- reading


@contextmanager
def _pil_pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Make PIL enforce ``max_pixels`` (as an error, not a warning) for the duration of the block."""
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _too_large(path: Path, pixels: int | str, max_pixels: int | None) -> ImageError:
    return ImageError(path, f"image is too large ({pixels} pixels, limit {max_pixels}); "
                            "possible decompression bomb, raise max_pixels to allow it")


def _check_file(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageError(path, "broken symbolic link (its target does not exist)" if path.is_symlink()
                         else "no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(path, "symbolic link loop (the link points back to itself)") from None
        raise ImageError(path, f"cannot access file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(path, "is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
        raise ImageError(path, "not a regular file (a pipe, socket or device)")
    if st.st_size == 0:
        raise ImageError(path, "empty file (0 bytes)")


def _open(path: Path, max_pixels: int | None) -> Image.Image:
    try:
        with _pil_pixel_limit(max_pixels):
            return Image.open(path)
    except UnidentifiedImageError:
        raise ImageError(path, "not an image file, or an unsupported image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(path, found.group(1) if found else "too many", max_pixels) from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except _DECODE_ERRORS as exc:
        raise ImageError(path, f"corrupt image header ({exc})") from None


def _check_header(img: Image.Image, path: Path, max_pixels: int | None, min_side: int) -> None:
    """Checks that need only the header: pixel count, frame count, side lengths."""
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise _too_large(path, w * h, max_pixels)
    if img.format != "MPO":  # camera JPEGs with an embedded preview: frame 0 is the photo
        try:
            n_frames = getattr(img, "n_frames", 1)
        except _DECODE_ERRORS as exc:
            raise ImageError(path, f"truncated or corrupt image data ({exc})") from None
        if n_frames > 1:
            raise ImageError(path, f"animated images are not supported ({n_frames} frames)")
    if min(w, h) < min_side:
        raise ImageError(path, f"image is too small ({w} x {h} pixels; both sides must be "
                               f"at least {min_side})")


def _upright(img: Image.Image) -> tuple[Image.Image, bytes | None]:
    """Apply the EXIF orientation; return the image and the EXIF to keep (orientation 1, no GPS).

    Unreadable EXIF is treated as absent: a damaged metadata block must not lose the photo.
    """
    try:
        exif = img.getexif()
        orientation = exif.get(_ORIENTATION, 1)
    except Exception:  # PIL raises a wide variety of errors on malformed EXIF
        return img, None
    if orientation in range(2, 9):
        with suppress(Exception):
            img = ImageOps.exif_transpose(img)
    if _ORIENTATION in exif:
        exif[_ORIENTATION] = 1
    if _GPS_IFD in exif:
        del exif[_GPS_IFD]
    try:
        return img, (exif.tobytes() if len(exif) else None)
    except Exception:
        return img, None


def _to_arrays(img: Image.Image, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Convert any supported PIL mode to ``(H, W, 3) uint8`` RGB and an optional alpha channel."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:  # 16-bit grey: scale 0..65535 to 0..255 (rounded x / 257)
        values = np.array(img)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageError(path, f"unsupported 32-bit integer image (mode {mode}, values "
                                   f"{values.min()}..{values.max()}, expected 0..65535)")
        grey = ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2), None
    if mode == "F":
        raise ImageError(path, "unsupported colour mode F (32-bit floating point)")
    target = "RGBA" if img.has_transparency_data else "RGB"
    if mode != target:
        try:
            if mode == "La":  # premultiplied grey + alpha: PIL converts it only to LA
                img = img.convert("LA")
            img = img.convert(target)
        except (ValueError, OSError):
            raise ImageError(path, f"unsupported colour mode {mode}") from None
    pixels = np.array(img)
    if target == "RGB":
        return pixels, None
    return np.ascontiguousarray(pixels[:, :, :3]), np.ascontiguousarray(pixels[:, :, 3])


def read_photo(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               min_side: int = 32) -> Photo:
    """Read an image file as an upright 8-bit RGB photo.

    Args:
        path: image file (JPEG, PNG, BMP, TIFF, WebP, or any single-frame format PIL reads).
        max_pixels: largest ``W * H`` accepted, checked from the header before decoding
            (decompression-bomb protection); None disables the check.
        min_side: smallest accepted width and height, in pixels.

    Returns:
        A :class:`Photo`. Conversions: CMYK -> RGB (PIL, not colour managed); 16-bit grey
        -> 8 bits by rounded ``v / 257``; grey, 1-bit and palette -> RGB; transparency
        (alpha channel, palette alpha or a transparent colour key) -> ``alpha``, unchanged.

    Raises:
        ImageError: missing, empty, unreadable, not an image, truncated or corrupt,
            animated or multi-frame, too large, too small, or an unsupported mode
            (32-bit float, LAB).
    """
    path = Path(path)
    _check_file(path)
    img = _open(path, max_pixels)
    with img:
        _check_header(img, path, max_pixels, min_side)
        try:
            with _pil_pixel_limit(max_pixels):
                img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_large(path, img.width * img.height, max_pixels) from None
        except MemoryError:
            raise ImageError(path, "not enough memory to decode the image") from None
        except _DECODE_ERRORS as exc:
            raise ImageError(path, f"truncated or corrupt image data ({exc})") from None
        fmt = _format_name(img)
        icc = img.info.get("icc_profile")
        if not (isinstance(icc, bytes) and icc[16:20] == b"RGB "):
            icc = None
        upright, exif = _upright(img)
        rgb, alpha = _to_arrays(upright, path)
    return Photo(path=path, rgb=rgb, alpha=alpha, format=fmt, exif=exif, icc_profile=icc)


def _format_name(img: Image.Image) -> str:
    return _FORMAT_ALIASES.get(img.format or "", img.format or "unknown")


def image_format(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS, min_side: int = 32) -> str:
    """The format :func:`read_photo` would give ``path``'s photo, from the header alone: a batch plans
    every photo's output name before any photo is decoded (a cluster's workers decode them).

    Raises:
        ImageError: as :func:`read_photo` for a file that the header shows it cannot read (not an image,
            too large or small, animated); damaged pixel data shows only when the photo is read.
    """
    path = Path(path)
    _check_file(path)
    with _open(path, max_pixels) as img:
        _check_header(img, path, max_pixels, min_side)
        return _format_name(img)


# ----------------------------------------------------------------------------- inputs


def is_image_name(name: str) -> bool:
    """Whether a file name is one advquery takes as a photo: an image suffix, not hidden."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def real_path(path: str | os.PathLike) -> Path:
    """The absolute path with symbolic links resolved, as far as they resolve: unlike ``Path.resolve``, a
    link loop does not raise (reading the file says what is wrong with it)."""
    return Path(os.path.realpath(path))


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies below it, symbolic links resolved."""
    return real_path(path).is_relative_to(real_path(folder))


def _strictly_below(root: Path | str, folders: set[str]) -> set[str]:
    """Those of ``folders`` (real paths) that lie inside ``root`` and are not ``root`` itself."""
    top = os.path.realpath(root).rstrip(os.sep) + os.sep
    return {f for f in folders if f.startswith(top)}


def is_output_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds the records of ``advquery protect``'s outputs (:data:`OUTPUT_RECORDS`)."""
    return os.path.isdir(os.path.join(folder, OUTPUT_RECORDS))


def _list_folder(folder: Path, recursive: bool, exclude: set[str], errors: list[str],
                 skip_outputs: bool = False) -> list[Path]:
    """Entries of ``folder`` with an image name that are not folders, sorted; hidden names and the
    ``exclude`` folders (real paths) skipped, and with ``skip_outputs`` the output folders below ``folder``.
    Broken links and other non-files are kept: reading them says why. A folder that cannot be listed adds a
    line to ``errors``."""
    def unlistable(exc: OSError) -> None:
        errors.append(f"{exc.filename or folder}: cannot list this folder ({exc.strerror or exc})")

    if not recursive:
        try:
            with os.scandir(folder) as entries:
                found = [Path(e.path) for e in entries if is_image_name(e.name) and not os.path.isdir(e.path)]
        except OSError as exc:
            unlistable(exc)
            return []
        return sorted(found)
    found = []
    for root, dirs, names in os.walk(folder, onerror=unlistable):
        dirs[:] = [d for d in dirs if not d.startswith(".") and os.path.realpath(os.path.join(root, d)) not in exclude
                   and not (skip_outputs and is_output_folder(os.path.join(root, d)))]
        found += [Path(root, n) for n in names if is_image_name(n)]
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def _below(path: Path, base: Path) -> Path:
    """``path`` relative to ``base``, without leading ``..``: a pattern such as ``*/../../x/*.jpg``
    matches outside its base folder, and outputs must stay inside the output folder."""
    parts = Path(os.path.normpath(os.path.relpath(path, base))).parts
    while parts and parts[0] == os.pardir:
        parts = parts[1:]
    return Path(*parts) if parts else Path(path.name)


def _glob_base(pattern: str) -> Path:
    """The leading part of a glob pattern that has no wildcard, e.g. ``photos`` in ``photos/*/*.jpg``."""
    parts = Path(pattern).parts
    plain = []
    for part in parts[:-1]:
        if _GLOB_MAGIC.search(part):
            break
        plain.append(part)
    return Path(*plain) if plain else Path(".")


def _in_output_folder(path: Path, base: Path, known: dict[Path, bool]) -> bool:
    """Whether ``path`` or a folder above it, below ``base``, is an output folder (``known``: those checked)."""
    for folder in (path, *path.parents):
        if folder == base or folder == Path(folder.anchor) or folder == Path("."):
            return False
        if folder not in known:
            known[folder] = is_output_folder(folder)
        if known[folder]:
            return True
    return False


def collect_inputs(inputs: list[str], recursive: bool = False, exclude: tuple[str | os.PathLike, ...] = (),
                   skip_output_folders: bool = False) -> tuple[list[InputFile], list[str]]:
    """Expand files, folders and glob patterns into a list of image files.

    Args:
        inputs: file paths, folder paths or glob patterns (``*``, ``?``, ``[..]``; ``**``
            spans folders). ``~`` is expanded.
        recursive: descend into subfolders of given folders, and list folders that a pattern
            matches. Without it, only a folder's own files are listed and folders matched by a
            pattern are skipped.
        exclude: folders skipped where they lie inside an input folder or a pattern's base folder
            (a command's own output folder, so that a rerun does not take its outputs as inputs);
            a file given directly is still taken.
        skip_output_folders: also skip every output folder of ``advquery protect`` (one that holds
            :data:`OUTPUT_RECORDS`) below an input folder or a pattern's base folder, such as the outputs of
            an earlier run to another folder; a folder given directly is still listed.

    Returns:
        ``(files, errors)``. ``files`` keeps input order (sorted within a folder or pattern),
        without duplicates (same real path). ``relative`` is the file name for a file given
        directly, the path below the folder for a folder, and the path below the pattern's
        wildcard-free base folder for a pattern (never with ``..``). Folders and patterns yield only names with
        an image extension and skip hidden names; a file given directly is always taken
        (reading it reports any problem). ``errors`` has one ``"INPUT: reason"`` line for each
        input that does not exist or yields no image file.
    """
    files: list[InputFile] = []
    errors: list[str] = []
    seen: set[str] = set()
    excluded = {os.path.realpath(os.path.expanduser(str(e))) for e in exclude}

    def add(path: Path, relative: Path) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            files.append(InputFile(path=path, relative=relative))

    for raw in inputs:
        text = os.path.expanduser(str(raw))
        path = Path(text)
        if path.is_dir():
            listing_errors: list[str] = []
            found = _list_folder(path, recursive, _strictly_below(path, excluded), listing_errors, skip_output_folders)
            errors += listing_errors
            for f in found:
                add(f, f.relative_to(path))
            if not found and not listing_errors:
                errors.append(f"{raw}: no image files in this folder"
                              + ("" if recursive else " (subfolders are searched only when recursive)"))
        elif path.is_file() or (path.is_symlink() and not path.exists()):  # reading a broken link says why
            add(path, Path(path.name))
        elif path.exists():
            errors.append(f"{raw}: not a regular file or folder")
        elif _GLOB_MAGIC.search(text):
            base, matched, known = _glob_base(text), [], {}
            skip = _strictly_below(base, excluded)
            for match in sorted(glob.glob(text, recursive=True)):
                m = Path(match)
                if any(is_inside(m, folder) for folder in skip):
                    continue
                if skip_output_folders and _in_output_folder(m if m.is_dir() else m.parent, base, known):
                    continue
                if m.is_dir():
                    if recursive:
                        matched += _list_folder(m, True, skip, errors, skip_output_folders)
                elif is_image_name(m.name):
                    matched.append(m)
            for f in matched:
                add(f, _below(f, base))
            if not matched:
                errors.append(f"{raw}: no image files match this pattern")
        else:
            errors.append(f"{raw}: no such file or folder")
    return files, errors


# ----------------------------------------------------------------------------- writing


def format_for_suffix(suffix: str) -> str:
    """PIL format name for a file suffix, with or without the dot: ``'jpg'`` -> ``'JPEG'``.

    >>> format_for_suffix('.JPG'), format_for_suffix('png')
    ('JPEG', 'PNG')
    """
    key = "." + suffix.lower().lstrip(".")
    if key not in _FORMAT_FOR_SUFFIX:
        raise ValueError(f"unsupported image suffix {suffix!r}, expected one of "
                         f"{', '.join(sorted(_FORMAT_FOR_SUFFIX))}")
    return _FORMAT_FOR_SUFFIX[key]


def suffix_for_format(fmt: str) -> str:
    """Usual file suffix (with dot) for a PIL format name: ``'JPEG'`` -> ``'.jpg'``.

    >>> suffix_for_format('JPEG'), suffix_for_format('tiff')
    ('.jpg', '.tif')
    """
    key = _FORMAT_ALIASES.get(fmt.upper(), fmt.upper())
    if key not in _SUFFIX_FOR_FORMAT:
        raise ValueError(f"unsupported image format {fmt!r}, expected one of "
                         f"{', '.join(sorted(_SUFFIX_FOR_FORMAT))}")
    return _SUFFIX_FOR_FORMAT[key]


def _check_rgb(rgb: object, name: str = "rgb") -> None:
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3
            and rgb.shape[2] == 3):
        got = f"{rgb.shape} {rgb.dtype}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"expected {name} as a (H, W, 3) uint8 array, got {got}")


def jpeg_subsampling(quality: int) -> int:
    """PIL's chroma subsampling of advquery's JPEGs at ``quality``: 0 (4:4:4) at 90 and above, where subsampling
    alone would blur a fine perturbation away, else 2 (4:2:0)."""
    return 0 if quality >= 90 else 2


def _save_options(fmt: str, quality: int, exif: bytes | None, icc_profile: bytes | None) -> dict:
    options: dict = {}
    if fmt == "JPEG":
        options.update(quality=quality, optimize=True, subsampling=jpeg_subsampling(quality))
    elif fmt == "WEBP":
        options.update(quality=quality)
    elif fmt == "TIFF":
        options.update(compression="tiff_lzw")
    if fmt != "BMP":  # BMP stores neither
        if exif:
            options["exif"] = exif
        if icc_profile:
            options["icc_profile"] = icc_profile
    return options


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_photo_atomic(path: str | os.PathLike, rgb: np.ndarray, alpha: np.ndarray | None = None,
                       format: str | None = None, quality: int = 95, exif: bytes | None = None,
                       icc_profile: bytes | None = None) -> Path:
    """Write an image atomically: temporary file in the same folder, then ``os.replace``.

    Args:
        path: output file; missing parent folders are created; an existing file is replaced
            (its permission bits are kept).
        rgb: ``(H, W, 3) uint8`` pixels.
        alpha: ``(H, W) uint8`` alpha channel, or None. JPEG cannot store alpha: it is
            dropped silently there (the caller decides whether that is acceptable).
        format: PIL format (``'PNG'``, ``'JPEG'``, ``'WEBP'``, ``'TIFF'``, ``'BMP'``; ``'jpg'``
            accepted); default: from the suffix of ``path``.
        quality: JPEG/WebP quality 1-100 (default 95). JPEG uses 4:4:4 chroma (no
            subsampling) for quality >= 90, else 4:2:0, and optimised Huffman tables.
        exif: EXIF block to embed (e.g. :attr:`Photo.exif`); ignored for BMP.
        icc_profile: ICC profile to embed; ignored for BMP.

    Pixels whose three channels are equal everywhere (a black-and-white photo) are written as a grey image
    in PNG, JPEG and TIFF (mode L, or LA with alpha): the same pixels, read back, in one channel instead of
    three; but with an ``icc_profile``, which describes RGB data, they stay RGB.

    Returns:
        ``path`` as a Path. On any error the temporary file is removed and an existing
        ``path`` is left untouched.
    """
    path = Path(path)
    fmt = format_for_suffix(path.suffix) if format is None else _FORMAT_ALIASES.get(format.upper(), format.upper())
    suffix_for_format(fmt)  # validates the format
    _check_rgb(rgb)
    if not (isinstance(quality, int) and 1 <= quality <= 100):
        raise ValueError(f"expected quality as an integer in 1..100, got {quality!r}")
    if alpha is not None and not (isinstance(alpha, np.ndarray) and alpha.dtype == np.uint8
                                  and alpha.shape == rgb.shape[:2]):
        got = f"{alpha.shape} {alpha.dtype}" if isinstance(alpha, np.ndarray) else type(alpha).__name__
        raise ValueError(f"expected alpha as a {rgb.shape[:2]} uint8 array, got {got}")
    grey = fmt in _GREY_FORMATS and icc_profile is None and bool((rgb[..., :1] == rgb[..., 1:]).all())
    pixels = rgb[..., 0] if grey else rgb
    if alpha is not None and fmt != "JPEG":
        pixels = np.dstack([pixels, alpha])
    return _save_atomic(path, Image.fromarray(np.ascontiguousarray(pixels)), fmt,
                        _save_options(fmt, quality, exif, icc_profile))


def write_grey_atomic(path: str | os.PathLike, grey: np.ndarray) -> Path:
    """Write an ``(H, W) uint8`` greyscale image (e.g. a budget map) atomically, in the format of the
    suffix (JPEG at quality 95), as :func:`write_photo_atomic` writes photos."""
    path = Path(path)
    fmt = format_for_suffix(path.suffix)
    if not (isinstance(grey, np.ndarray) and grey.dtype == np.uint8 and grey.ndim == 2):
        got = f"{grey.shape} {grey.dtype}" if isinstance(grey, np.ndarray) else type(grey).__name__
        raise ValueError(f"expected grey as a (H, W) uint8 array, got {got}")
    return _save_atomic(path, Image.fromarray(np.ascontiguousarray(grey), "L"), fmt, _save_options(fmt, 95, None, None))


def _save_atomic(path: Path, img: Image.Image, fmt: str, options: dict) -> Path:
    """Save ``img`` to ``path`` through :func:`atomic_write`."""
    with atomic_write(path) as f:
        img.save(f, format=fmt, **options)
    return path


class _CheckedFile:
    """A binary file without a descriptor: given one, PIL's encoders and ``numpy.save`` write to it
    directly and miss a short write, so a full disk would leave a truncated file that looks written.
    Through Python's buffered writes it fails with ``No space left on device``."""

    def __init__(self, f: BinaryIO):
        self._f = f

    def write(self, data) -> int:
        return self._f.write(data)

    def read(self, size: int = -1) -> bytes:  # numpy takes only readable objects for a file (write-only here)
        return self._f.read(size)

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def flush(self) -> None:
        self._f.flush()


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content to: on success it replaces ``path`` in one step
    (synced to disk first; an existing file's permission bits are kept), on any error or interrupt it
    is removed and ``path`` is left as it was. Missing parent folders are created.

    The file is ``.NAME.advquery-PID-XXXX.tmp`` beside ``path``; :func:`remove_stale_temporaries`
    removes one whose process was killed before it could clean up."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = _new_file_mode()
    # Named before it is made and made within the block, so that an interrupt arriving anywhere once the file exists
    # (Ray cancels a task by raising KeyboardInterrupt wherever its code is) removes it.
    tmp = _temporary_name(path)
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            tmp = None  # another's file (not in 2**64 tries): left alone
            raise
        with os.fdopen(fd, "wb") as f:
            yield _CheckedFile(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and exc.strerror and exc.filename is None:
            exc.filename = str(path)  # a full disk names the file it could not write
        raise


def _temporary_name(path: Path) -> Path:
    """The name of a new temporary file for :func:`atomic_write` beside ``path``: this process's ID and 64 random
    bits; the name part is shortened so that the whole stays within the file system's limit."""
    return path.with_name(f".{path.name[:80]}.advquery-{os.getpid()}-{secrets.token_hex(8)}.tmp")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove what killed processes left in ``folder`` and below: temporary files of
    :func:`atomic_write` whose process no longer runs, and claim files (:func:`claim`) that no process
    holds. Those of running processes are left alone. Returns the files removed."""
    removed = []
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(root, name)
            found = _TEMPORARY.match(name)
            if found and not _running(int(found.group(1))):
                with suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
            elif _CLAIM.match(name):
                with _locked(path) as held:
                    if held:  # nobody else holds it: a leftover, removed when the block ends
                        removed.append(path)
    return removed


def _claim_file(target: Path) -> Path:
    return target.with_name(f".{target.name[:200]}.advquery-claim")


@contextmanager
def claim(target: str | os.PathLike) -> Iterator[bool]:
    """Claim the output file ``target`` for as long as the block runs: yields True when this process
    holds the claim, False when another running process does (the block should leave the work to it).

    The claim is an exclusive ``flock`` on the hidden file ``.NAME.advquery-claim`` beside ``target``,
    which the system releases when a process ends, even when it is killed; the file is removed when
    the block ends. A file left by a killed process is simply claimed again."""
    with _locked(_claim_file(Path(target))) as held:
        yield held


@contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing, removed at the end), or yield False
    when another process holds it. The lock is held through a file object, which closes its descriptor (and so
    releases the lock) when it is dropped, wherever an interrupt stops this code: an interrupted task never keeps
    a claim held (its file, left unheld, is removed by remove_stale_temporaries)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with open(path, "ab") as lock:
            if not _flock_now(lock.fileno()):
                yield False
                return
            if _still_at(path, lock.fileno()):
                try:
                    yield True
                finally:
                    with suppress(FileNotFoundError):
                        os.unlink(path)
                return
        # The file its last holder removed meanwhile: the one at ``path`` now is locked instead.


def _flock_now(fd: int) -> bool:
    """Whether an exclusive ``flock`` on ``fd`` was taken without waiting (False: another process holds one)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _still_at(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


# ----------------------------------------------------------------------------- tensors


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``(H, W, 3) uint8`` -> ``(1, 3, H, W) float32`` in [0, 1] (a new tensor, not a view).

    >>> to_tensor(np.full((2, 4, 3), 255, np.uint8)).shape
    torch.Size([1, 3, 2, 4])
    """
    _check_rgb(rgb)
    chw = np.array(rgb.transpose(2, 0, 1), dtype=np.uint8, order="C")
    return torch.from_numpy(chw).to(torch.float32).div_(255.0).unsqueeze(0)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` or ``(3, H, W)`` float tensor in [0, 1] -> ``(H, W, 3) uint8``.

    Values are clamped to [0, 1], then rounded to the nearest grey level (not truncated).
    Any device and floating dtype; the result is on the CPU.

    >>> to_uint8(torch.tensor([[[0.4 / 255]], [[1.6 / 255]], [[2.0]]])).ravel().tolist()
    [0, 2, 255]
    """
    shape_ok = isinstance(t, torch.Tensor) and (
        (t.ndim == 4 and t.shape[0] == 1 and t.shape[1] == 3) or (t.ndim == 3 and t.shape[0] == 3))
    if not (shape_ok and t.is_floating_point()):
        got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"expected a float tensor of shape (1, 3, H, W) or (3, H, W) in [0, 1], got {got}")
    x = t.detach().reshape(t.shape[-3:]).to(device="cpu", dtype=torch.float32)
    if x.numel() and not all(map(math.isfinite, torch.aminmax(x))):  # one pass, allocating nothing (NaN propagates)
        raise ValueError("expected finite values in [0, 1], got NaN or infinity")
    x = x.clamp(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)  # one new float tensor, then in place
    return x.permute(1, 2, 0).contiguous().numpy()  # torch's copy into (H, W, 3) is quicker than numpy's
