"""``advquery protect``: photos that look the same but that retrieval can no longer match."""
import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..cluster import (add_cluster_options, in_shard, map_on_ray, ray_session, ray_target, task_gpus,
                       torch_threads, worker_device, worker_model)
from ..extraction import prefetch
from ..io import (DEFAULT_MAX_PIXELS, ImageError, InputFile, Photo, claim, image_format, is_inside, printable,
                  read_photo, real_path, remove_stale_temporaries)
from ..models import PRECISIONS, check_precision, load_model, resolve_device
from ..outputs import OutputRecords
from ..protection import DEFAULT_METHOD, DEFAULT_NOISE_SSIM, DEFAULT_STRENGTH, GRADIENT_METHODS, MASK_GAIN, METHODS, STRENGTHS, \
    ProtectionRecord, check_method_options, map_path, output_format, output_path, protect_photo
from .common import CommandError, JsonLines, add_model_options, add_steps_option, check_output_file, \
    check_output_folder, collect_or_fail, describe_out_of_memory, error, interrupt_exit_code, number, out_of_memory, \
    positive_int, process_count, seed_number, user_errors


def register(commands: argparse._SubParsersAction) -> None:
    presets = "; ".join(f"{name}: {s.description}" for name, s in STRENGTHS.items()).replace("%", "%%")
    p = commands.add_parser("protect", help="protect photos against retrieval (the main job)",
                            description="Write protected copies of photos: they look unchanged, but "
                            "content-based retrieval no longer finds the related photos. Inputs are never modified.")
    p.add_argument("inputs", nargs="+", metavar="INPUTS", help="photo files, folders or glob patterns")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR",
                   help="output folder; files keep their path relative to the input root")
    p.add_argument("--method", choices=METHODS,
                   help=f"protection method (default: {DEFAULT_METHOD}, every preset's); ssim-pire: an L-infinity bound with the "
                        "change priced in SSIM, spent where it moves the descriptor most per SSIM lost; pire: a "
                        "uniform L-infinity budget; masked-pire: "
                        f"an SSIM-masking budget, up to {MASK_GAIN:g}x the flat-region budget in texture; "
                        "cv-pire and sd-pire use the thesis budget maps "
                        "(m = 50 levels, 100 steps; --eps sets m). Baselines without a model or budget, at the "
                        "photo's own resolution: rmd, ls, fmd, rmd+ls, ls+fmd remove (minimum-distortion patches, "
                        "local smoothing) and inject SIFT keypoints (Do et al. 2010) on the grey image, colour "
                        "recovered by ratio (the report adds keypoints removed and injected); noise adds Gaussian "
                        "noise matched to --target-ssim. They ignore --strength; the report still measures the "
                        "descriptor similarity with --model at --size")
    p.add_argument("--strength", choices=tuple(STRENGTHS), default=DEFAULT_STRENGTH,
                   help=f"budget preset (default: {DEFAULT_STRENGTH}); {presets}")
    p.add_argument("--eps", type=number(float, 0, 255, low_open=True), metavar="LEVELS",
                   help="override the budget in grey levels (masked-pire: flat-region budget; pire, ssim-pire: "
                        "L-infinity bound; cv-pire/sd-pire: multiplier m)")
    p.add_argument("--ssim-weight", type=number(float), metavar="W",
                   help="ssim-pire only: override the preset's price on SSIM (more: higher SSIM, less effect; "
                        "0 is pire)")
    add_steps_option(p)
    p.add_argument("--target-ssim", type=number(float, 0, 1, low_open=True, high_open=True), metavar="S",
                   help=f"noise only: SSIM the noise is matched to, in (0, 1) (default: {DEFAULT_NOISE_SSIM})")
    p.add_argument("--format", choices=("png", "jpg"), help="output format (default: JPEG stays JPEG, others PNG)")
    p.add_argument("--quality", type=number(int, 1, 100), default=95, help="JPEG quality (default: 95)")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--keep-metadata", action="store_true",
                   help="keep EXIF (camera, date; GPS still removed); default drops it. The colour profile is always kept")
    p.add_argument("--seed", type=seed_number, help="random seed (reproducible output)")
    p.add_argument("--report", type=Path, metavar="FILE.jsonl",
                   help="append one JSON line per photo: status, quality, effect, and the settings that made it")
    p.add_argument("--save-map", action="store_true",
                   help="also write each protected photo's budget map, where the method may change it (white: "
                        "the most), as an 8-bit greyscale PNG at the working resolution to OUTDIR/maps/<relative "
                        "path>.png, kept apart from the photos to publish; 'map' in the report. The map is the "
                        "per-pixel bound (largest over the colour channels) divided by its maximum: masked-pire shows its "
                        "SSIM-masking gain, cv-pire and sd-pire their colour-variance or standard-deviation map, "
                        "the constant bound of pire and ssim-pire is all white. Refused for the methods without a budget (keypoints, "
                        "noise)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="gradient methods: precision of the network passes: auto (default: bfloat16 on a CPU that computes it natively "
                        "where one pass is measured faster, once per machine; bfloat16 or float16 on CUDA, else float32), float32, bfloat16, float16 (CUDA); the "
                        "perturbation and every reported figure stay float32")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (default: skip those made from the same input, so that an interrupted "
                        "or concurrent batch resumes; refuse those made from another input, and files advquery did not "
                        "make)")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images (decompression bombs; default: {DEFAULT_MAX_PIXELS})")
    add_model_options(p)
    add_cluster_options(p, process_count, "protect the photos")
    p.set_defaults(run=run_protect)


def summary_table(records: list[ProtectionRecord]) -> str:
    """Per-photo quality and effect, as a plain-text table."""
    lines = [f"{'photo':<32} {'SSIM':>6} {'PSNR':>6} {'Linf':>5} {'mean':>5} {'sim':>6} {'steps':>5} {'sec':>6}"]
    for r in records:
        name = Path(r.input).name[-32:]
        if r.status == "protected":
            lines.append(f"{name:<32} {r.ssim:6.4f} {r.psnr:6.2f} {r.linf:5.0f} {r.mean_abs_change:5.2f} "
                         f"{r.similarity:6.3f} {'-' if r.steps is None else r.steps:>5} {r.seconds:6.1f}")
        else:
            lines.append(f"{name:<32} {r.status}: {r.error or r.note or r.output}")
    return "\n".join(printable(line) for line in lines)


OPTION_FLAGS = {"target_ssim": "--target-ssim", "ssim_weight": "--ssim-weight", "eps_levels": "--eps",
                "steps": "--steps"}
# What makes an output what it is: recorded in the report and beside the outputs (with the model's name).
SETTINGS = ("method", "strength", "eps", "ssim_weight", "steps", "target_ssim", "size", "precision", "format",
            "quality", "keep_metadata", "seed", "save_map")
BUSY = "another advquery process is protecting it"


@user_errors
def run_protect(args: argparse.Namespace) -> int:
    args.method = args.method or DEFAULT_METHOD
    ray = ray_target(args)
    try:
        check_method_options(args.method, target_ssim=args.target_ssim, ssim_weight=args.ssim_weight,
                             eps_levels=args.eps, steps=args.steps, names=OPTION_FLAGS)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.precision is not None:
        if args.method not in GRADIENT_METHODS:
            raise CommandError(f"--precision applies to {', '.join(GRADIENT_METHODS)} only, not to {args.method}")
        try:
            check_precision(args.precision, resolve_device(args.device))
        except ValueError as exc:
            raise CommandError(f"--precision: {exc}") from None
    if args.save_map and args.method not in GRADIENT_METHODS:
        raise CommandError(f"--save-map: method {args.method} has no per-pixel budget to map; "
                           f"it applies to {', '.join(GRADIENT_METHODS)}")
    check_output_folder(args.output, "-o")
    # Neither this run's outputs nor those of earlier runs to other folders (OUTDIR/.advquery/outputs) are inputs.
    files, problems = collect_or_fail(args.inputs, args.recursive, "photos to protect", exclude=(args.output,),
                                      skip_output_folders=True)
    if args.report:
        check_output_file(args.report, "--report")
    if args.output.is_dir():
        remove_stale_temporaries(args.output)  # what a killed earlier run left
    made_by = OutputRecords.of(args.output)  # decided once, before this run writes anything
    plan = in_shard(_plan(files, args), args.shard, lambda entry: entry.input if isinstance(entry, ProtectionRecord)
                    else str(entry.file.path))
    report = JsonLines(args.report, "--report") if args.report else None
    records: list[ProtectionRecord] = []
    interrupted = None
    try:
        with _protected(plan, args, made_by, ray) as (made, settings):
            for record in tqdm(made, total=len(plan), desc="protecting", unit="photo", disable=None):
                records.append(record)
                if record.status == "failed":
                    tqdm.write(f"advquery: error: {printable(record.error)}", file=sys.stderr)
                if report:
                    report.write({**record.to_json(), "settings": settings})
    except KeyboardInterrupt as exc:  # SIGINT or SIGTERM: what is done stays done, the summary is kept
        interrupted = exc
    finally:
        if report:
            report.close()
        if ray and args.output.is_dir():
            remove_stale_temporaries(args.output)  # what workers killed meanwhile left (Ray ran their photos again)
    print(summary_table(records))
    failed = [r for r in records if r.status == "failed"] + problems
    done = sum(r.status == "protected" for r in records)
    skipped = sum(r.status == "skipped" and r.note is None for r in records)
    busy = sum(r.note == BUSY for r in records)
    print(f"protected {done}, skipped {skipped} existing (use --overwrite), failed {len(failed)}"
          + (f", left {busy} to another advquery process" if busy else ""), file=sys.stderr)
    if interrupted is not None:
        error(f"interrupted after {len(records)} of {len(plan)} photos; the same command resumes the batch")
        return interrupt_exit_code(interrupted)
    return 1 if failed or (report and report.failed) else 0


@dataclass(frozen=True)
class Job:
    """One photo to protect and the files it writes."""

    file: InputFile
    target: Path
    fmt: str
    map_target: Path | None


def _plan(files: list[InputFile], args: argparse.Namespace) -> list[Job | ProtectionRecord]:
    """Each input's job, or the failure that keeps it from having one: decided for the whole batch before any
    photo is protected, in input order (of two inputs with the same output the first keeps it), from the
    headers alone, so that Ray workers and shards divide work that no longer depends on the others'."""
    input_paths = {real_path(f.path) for f in files}  # no output may replace any of them
    claimed: dict[Path, Path] = {}  # output -> the input it belongs to in this batch
    return [_plan_one(f, args, input_paths, claimed) for f in files]


def _plan_one(f: InputFile, args: argparse.Namespace, input_paths: set[Path],
              claimed: dict[Path, Path]) -> Job | ProtectionRecord:
    try:
        fmt = output_format(image_format(f.path, args.max_pixels), args.format)
    except ImageError as exc:
        return ProtectionRecord(str(f.path), status="failed", error=str(exc))
    target = output_path(args.output, f.relative, fmt)
    if real_path(target) in input_paths:
        which = "the input" if real_path(target) == real_path(f.path) else f"the input {target}"
        return ProtectionRecord(str(f.path), status="failed",
                                error=f"{f.path}: output would overwrite {which}; choose another -o folder")
    owner = claimed.setdefault(real_path(target), f.path)
    if owner != f.path:
        hint = "rename one" if args.format else "rename one or use --format"
        return ProtectionRecord(str(f.path), status="failed",
                                error=f"{f.path}: same output {target} as {owner}; {hint}")
    map_target = map_path(args.output, f.relative) if args.save_map else None
    if map_target and (real_path(map_target) in input_paths
                       or claimed.setdefault(real_path(map_target), f.path) != f.path):
        return ProtectionRecord(str(f.path), status="failed", error=f"{f.path}: its budget map {map_target} "
                                "would replace an input or another output; choose another -o folder")
    if not all(is_inside(t, args.output) for t in (target, map_target) if t is not None):
        return ProtectionRecord(str(f.path), status="failed", error=f"{f.path}: output {target} would lie outside "
                                f"{args.output} (through a symbolic link); choose another -o folder")
    return Job(f, target, fmt, map_target)


@contextmanager
def _protected(plan: list[Job | ProtectionRecord], args: argparse.Namespace, made_by: OutputRecords | None,
               ray: tuple[str, int | None] | None) -> Iterator[tuple[Iterator[ProtectionRecord], dict]]:
    """The record of each planned photo, in plan order, made in this process or by Ray tasks (``ray``: where,
    from :func:`ray_target`), and the settings recorded with them. Both paths run :func:`_protect_one` per
    photo, with the output folder's records ``made_by`` (None: it keeps none, see :meth:`OutputRecords.of`);
    a planned failure is its own record."""
    jobs = [job for job in plan if isinstance(job, Job)]
    if ray:
        with ray_session(*ray):
            model_name = load_model(args.model, device="cpu").name  # what workers record; a bad --model fails here, once
            settings = {"model": model_name, **{name: getattr(args, name) for name in SETTINGS}}
            made = map_on_ray(_protect_task, jobs, args, settings, made_by, threads=args.threads or 1,
                              gpus=task_gpus(args.device),
                              failed=lambda job, why: ProtectionRecord(str(job.file.path), status="failed",
                                                                       error=f"{job.file.path}: {why}"))
            yield _in_plan_order(plan, made), settings
        return
    with torch_threads(args.threads):
        model = load_model(args.model, device=args.device)
        settings = {"model": model.name, **{name: getattr(args, name) for name in SETTINGS}}
        # The next photo is decoded in the background while the current one is attacked.
        decoded = prefetch(lambda job: (job, _read(job.file, args.max_pixels)), jobs, depth=1)
        made = (_protect_one(job, photo, args, model, settings, made_by) for job, photo in decoded)
        yield _in_plan_order(plan, made), settings


def _in_plan_order(plan: list[Job | ProtectionRecord], made: Iterator[ProtectionRecord]) -> Iterator[ProtectionRecord]:
    """The planned failures and the records ``made`` for the jobs, merged back into plan order."""
    for entry in plan:
        yield next(made) if isinstance(entry, Job) else entry


def _protect_task(job: Job, args: argparse.Namespace, settings: dict, made_by: OutputRecords | None
                  ) -> ProtectionRecord:
    """A Ray task: one photo, read and protected on the worker with the worker's model."""
    return _protect_one(job, _read(job.file, args.max_pixels), args,
                        worker_model(args.model, worker_device(args.device)), settings, made_by)


def _read(f, max_pixels: int) -> Photo | ImageError:
    """The decoded photo, or the error that says why it cannot be read."""
    try:
        return read_photo(f.path, max_pixels=max_pixels)
    except ImageError as exc:
        return exc


def _protect_one(job: Job, photo: Photo | ImageError, args: argparse.Namespace, model, settings: dict,
                 made_by: OutputRecords | None) -> ProtectionRecord:
    """Protect one planned photo unless another process is at it or its output exists (made from this input:
    skipped; from another, or not made by advquery at all: refused; never recorded, its run killed before it
    could: made again), and record which input made the output in ``made_by`` (None: a folder without records,
    whose outputs are taken as they are); the serial path and each Ray task alike."""
    f, target = job.file, job.target
    try:
        if isinstance(photo, ImageError):
            raise photo
        with claim(target) as ours:  # concurrent runs on the same folder split the photos
            if not ours:
                return ProtectionRecord(str(f.path), output=str(target), status="skipped", note=BUSY)
            if target.exists() and not args.overwrite:
                existing = made_by.existing(target, f.path) if made_by else "same"  # no records: taken as they are
                if existing == "same":
                    return ProtectionRecord(str(f.path), output=str(target), status="skipped")
                if existing == "unrecorded":
                    return ProtectionRecord(str(f.path), status="failed", error=f"{f.path}: output {target} exists and "
                                            "advquery did not make it (it has no record); use --overwrite to replace "
                                            "it, or another -o folder")
                if existing != "unfinished":
                    return ProtectionRecord(str(f.path), status="failed", error=f"{f.path}: output {target} exists, made "
                                            f"from {existing}; use --overwrite to replace it, or another -o folder")
            if made_by:
                made_by.begin(target, f.path)  # before the output: until recorded whole, it is an unfinished one
            before = _identity(target)
            try:
                record = protect_photo(photo, target, model, job.fmt, args.quality, args.keep_metadata,
                                       job.map_target, method=args.method, strength=args.strength, eps_levels=args.eps,
                                       steps=args.steps, size=args.size, seed=args.seed, target_ssim=args.target_ssim,
                                       ssim_weight=args.ssim_weight,
                                       precision=args.precision or "auto")
                if made_by:
                    made_by.write(target, f.path, settings)
            except BaseException:  # written but not recorded (an interrupt while the output is measured, a full
                if _identity(target) != before:  # disk): it could later be taken for another input's
                    target.unlink(missing_ok=True)
                raise
            return record
    except ImageError as exc:
        return ProtectionRecord(str(f.path), status="failed", error=str(exc))
    except OSError as exc:
        return ProtectionRecord(str(f.path), status="failed",
                                error=f"{f.path}: cannot write {target} ({exc.strerror or exc})")
    except (MemoryError, RuntimeError) as exc:  # this photo at this size needs more memory than there is: the others may not
        if not out_of_memory(exc):
            raise
        return ProtectionRecord(str(f.path), status="failed", error=f"{f.path}: {describe_out_of_memory(exc)}")


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file ``path`` is now (an atomic write makes a new one), or None where there is none."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns
