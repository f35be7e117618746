"""Write docs/benchmarks.md and the README's "How well does it protect?" table from the JSON files in
bench/results/ (run after the benchmarks; ``make bench`` does).

docs/benchmarks.md holds every results table, each with the command that reproduces it, its machine line and
whether it was measured on today's roxford5k-mini database (made uniform on 2026-12-01: until then an image's
resolution told positives from distractors, ../shared/data/README.md). The README gets one compact table, from
the tracker benchmark on the test split when it exists, else on the validation (tuning) split, labelled so.

Run: ``python bench/readme_tables.py [--check]`` (``--check``: write nothing, fail if a file is out of date).
"""
import argparse
import json
import re
import statistics
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from candidates import LEFT_OUT, defined_as_today
from common import RESULTS, git, markdown_table
from speed import changed_presets

from advquery.protection import STRENGTHS
from advquery.trackers import EDITS, QUICK_EDITS, QUICK_SYSTEMS, SYSTEMS, system

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench:protection:start -->", "<!-- bench:protection:end -->"
UNIFORM_DATABASE = "2026-12-01"  # the day roxford5k-mini's database became uniform (768 px, JPEG 85 for all)
# The README table: the tracker benchmark's quick suite, the test split preferred (figures are reported there), and
# of a split's runs the one with the most queries.
PROTECTION_SPLITS = ("test", "validation")
BLOCKED = 0.25  # a tracker counts as blocked at or below this share of its retrieval (verify's calibration bound)


def measured_on(name: str) -> str:
    """The day ``bench/results/NAME.json`` was measured: the JSON's own ``measured`` field when it has one, else
    the date of the last commit that changed it, else (not committed yet) the file's modification day."""
    path = RESULTS / f"{name}.json"
    stored = json.loads(path.read_text()).get("measured")
    if stored:
        return str(stored)[:10]
    try:
        day = git("log", "-1", "--format=%cs", "--", str(path))
    except (OSError, subprocess.CalledProcessError):
        day = ""
    return day or datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d")


def measured_at(name: str, data: dict) -> str:
    """When a result was measured, for telling the later of two runs: its own time stamp where it recorded one
    (two runs of one day), else :func:`measured_on`'s day."""
    return str(data.get("measured") or measured_on(name))


def comparability(day: str) -> str:
    if day < UNIFORM_DATABASE:
        return f"no: measured {day}, before the database was made uniform; rerun before quoting"
    if day == UNIFORM_DATABASE:
        return f"unknown: measured {day}, the day the database changed; rerun before quoting"
    return f"yes: measured {day}, on the uniform database"


def baseline() -> str:
    data = json.loads((RESULTS / "baseline_retrieval.json").read_text())
    cell = {(r["model"], r["size"], r["dataset"], r["queries"], r["protocol"]): r for r in data["records"]}
    rows = []
    for model, size in sorted({(r["model"], r["size"]) for r in data["records"]}):
        def m(ds, q, p):
            return round(100 * cell[model, size, ds, q, p]["map"], 2)
        any_r = cell[model, size, "roxford5k-mini", "bb", "medium"]
        rows.append([model, size, m("roxford5k-mini", "bb", "medium"), m("roxford5k-mini", "bb", "hard"),
                     m("roxford5k-mini", "wi", "medium"), m("roxford5k-mini", "wi", "hard"),
                     m("roxford5k-mini-ext", "wi", "medium"), m("roxford5k-mini-ext", "wi", "hard"),
                     m("ukbench-mini", "wi", "medium"), round(any_r["images_per_s"], 2)])
    rnd = cell[next(iter(cell))[0], next(iter(cell))[1], "roxford5k-mini", "bb", "medium"]["random_map"]
    return (f"Machine: {data['machine']}\n\nmAP in %; random-ranking mAP (roxford5k-mini Medium): {100 * rnd:.2f}. "
            "Throughput: images/s of a single thread while other jobs ran (indicative only). Full table: "
            "`bench/results/baseline_retrieval.md`.\n\n"
            + markdown_table(["model", "size", "BB Medium", "BB Hard", "WI Medium", "WI Hard", "ext WI Medium",
                              "ext WI Hard", "ukbench mAP", "images/s"], rows))


# (result name, title, the command that reproduces it, note); every other result in bench/results/ follows them.
SECTIONS = [
    ("baseline_retrieval", "Baseline retrieval of the embedded models", "python bench/baseline_retrieval.py", ""),
    ("protect_pire_512_ssim_pire", "`ssim-pire`, the method of every preset, at 512 px",
     "python bench/protect_pire.py --size 512 --settings ssim-pire:low --name protect_pire_512_ssim_pire",
     "Same photos and protocol as the `pire` table at 512 px. One thread while two other benchmarks shared the "
     "two cores, so its seconds per photo are about twice what it costs alone."),
    ("protect_pire_1024_limit10_ssim_pire", "`ssim-pire` at 1024 px, 10 + 10 queries",
     "python bench/protect_pire.py --size 1024 --limit 10 --settings ssim-pire:low+jpeg ssim-pire:medium "
     "--name protect_pire_1024_limit10_ssim_pire",
     "What `advquery protect --method ssim-pire` does at its default size for a JPEG q95 output (`low` runs "
     "ssim-pire anyway; `medium` ran pire until 0.2.0). Measured with the 0.2.0 presets. One thread beside other "
     "benchmarks."),
    ("robustness_512_ssim_pire", "Robustness of the `ssim-pire` presets at 512 px",
     "python bench/robustness.py --size 512 --limit 10 --method ssim-pire --name robustness_512_ssim_pire "
     "--transfer-limit 0",
     "`medium` and `high` reuse the protected files of their tuning runs (same attack, same seed); seconds per "
     "photo on one thread shared with other benchmarks."),
    ("protect_pire_512", "PIRE protection, the `pire` presets, at 512 px",
     "python bench/protect_pire.py --size 512 --settings low medium paper-T30",
     "Each preset's one optimisation is saved in all three modes. Seconds per photo: `low` and `medium` on one "
     "thread while another benchmark used the second core; `paper-T30` on two threads (its files were reused)."),
    ("protect_pire_512_limit5", "Every preset and the paper's T = 200 and 500, first 5 + 5 queries",
     "python bench/protect_pire.py --size 512 --limit 5 --settings high paper-T200,500 low medium paper-T30",
     "T = 200 is a snapshot of the T = 500 run (same optimisation), its seconds 200/500 of that run's. One thread "
     "beside another benchmark; `low`, `medium` and `paper-T30` are the same files as in the table above."),
    ("protect_pire_1024_limit10", "PIRE protection at 1024 px, 10 + 10 queries",
     "python bench/protect_pire.py --size 1024 --limit 10 --settings low low+jpeg low+coarse2 low+jpeg+coarse2 "
     "medium+coarse1",
     "`+jpeg`: optimised through the JPEG q95 it is saved as (what `protect` does for JPEG output with `low`); "
     "`+coarseN`: the perturbation on a grid N times coarser than the working resolution (`coarseness=N`); "
     "`medium+coarse1` is the `medium` preset before it moved to a 512 px grid (today's `medium` at 1024 px is "
     "`medium+coarse2`, next table). These rows were written before presets were saved in all three modes (a "
     "rerun adds `refined` and `x10` rows). Seconds per photo: `low` and `low+jpeg` on one thread shared with "
     "another benchmark, the others on two threads."),
    ("protect_pire_1024_limit10_coarse", "Today's `medium` at 1024 px: its 512 px grid, 10 + 10 queries",
     "python bench/protect_pire.py --size 1024 --limit 10 --settings medium+coarse2 "
     "--name protect_pire_1024_limit10_coarse",
     "Compare with the `medium+coarse1` rows of the table above (same photos). One thread beside another "
     "benchmark."),
    ("protect_pire_1024_limit10_steps60", "`low` through the JPEG with 60 steps at 1024 px, 10 + 10 queries",
     "python bench/protect_pire.py --size 1024 --limit 10 --settings low+jpeg+steps60 "
     "--name protect_pire_1024_limit10_steps60",
     "What `advquery protect --method pire --strength low --steps 60` does for a JPEG q95 output at 1024 px. "
     "Two threads."),
    ("robustness_512", "Robustness of the `pire` presets at 512 px",
     "python bench/robustness.py --size 512 --limit 10 --transfer-limit 10 --presets low medium high",
     "Seconds per photo come from runs on one or two threads, partly shared with other benchmarks: indicative "
     "only (the machine line names the threads of one of those runs)."),
    ("robustness_512_high4levels", "`pire`'s `high` tuning: 4 grey levels",
     "`python bench/robustness.py --size 512 --limit 10 --transfer-limit 10 --presets low medium high` with "
     "`high` set to 4 grey levels (before commit 0a37c14); the file is that run's `robustness_512.md`",
     "A tuning record: docs/methods.md cites it for the choice of 4.5 levels."),
    ("robustness_512_high5levels", "`pire`'s `high` tuning: 5 grey levels",
     "the same command with `high` set to 5 grey levels",
     "A tuning record: docs/methods.md cites it for the choice of 4.5 levels."),
    ("robustness_1024", "Robustness of today's `medium` at 1024 px",
     "python bench/robustness.py --size 1024 --limit 10 --presets medium --parts edits",
     "At 1024 px a 50 % downscale halves what the tracker sees (at 512 px `resize:0.25` does)."),
    ("other_systems", "Other CBIR systems: PIRE paper Tables 6-8", "python bench/other_systems.py", ""),
    ("perceptual_methods_limit6", "Perceptual methods, first 6 queries, T = 40",
     "python bench/perceptual_methods.py --limit 6 --steps 40 --name perceptual_methods_limit6",
     "A small run of the thesis comparison: the full one (58 queries, T = 100, all parts) needs about 16 hours "
     "on this CPU. The thesis-setting rows run T = 40 steps without early stopping, the `protect` rows exactly "
     "what `advquery protect` runs for a JPEG q95 output. Plots: `bench/results/perceptual_methods_limit6_*.png`."),
    ("perceptual_methods_limit20_operating_point",
     "Perceptual methods at the operating point (SSIM about 0.99), first 20 queries",
     "python bench/perceptual_methods.py --limit 20 --steps 40 --parts curves --curve-budgets "
     "ssim-pire=60,150,300,600,1200 pire=1,2 cv-pire=20,10 sd-pire=20,10 masked-pire=0.5 "
     "--name perceptual_methods_limit20_operating_point",
     "The first 6 photos' files are those of the 6-query run (same settings). Plot: "
     "`bench/results/perceptual_methods_limit20_operating_point_quality_effect.png`."),
    ("perceptual_map_speed", "Colour-variance map speed", "python bench/perceptual_map_speed.py", ""),
    ("trunk_speed_amd", "Speed of the trunk's passes in bfloat16 (one pass; each preset's mix): the strided "
     "depthwise convolutions' backward by phases against PyTorch's own",
     "python bench/trunk_speed.py --passes 8 --mixes 3 --steps 8 --name trunk_speed_amd",
     "Run alone on the machine (timed figures); the reference in the same run."),
    ("pooling_speed", "Speed of the poolings an attack differentiates, and of R-MAC's region search by max pooling "
     "against the flattened search it replaced",
     "python bench/pooling_speed.py",
     "Run alone on the machine; the reference in the same run. Forward and backward of one float32 channels-last "
     "map of 1280 channels, as the attack pools it."),
    ("allocator", "Protection with freed memory reused (glibc) and with huge pages against glibc's defaults",
     "THP_MEM_ALLOC_ENABLE=0 python bench/allocator.py --photos 2",
     "Run alone on the machine; the reference in the same run, each protection in a process of its own. One "
     "protection of each photo an arm: the 1024 px rows move by more than their arms differ (a 12-run trial right "
     "after it: `low` 18.5 s with huge pages against 18.4 s without, both reusing memory; docs/methods.md)."),
    ("allocator_large_repeat", "A 12-megapixel photo's protection with huge pages and reused memory against glibc's "
     "defaults, repeated",
     "THP_MEM_ALLOC_ENABLE=0 python bench/allocator.py --parts large --name allocator_large_repeat",
     "Run alone on the machine right after `allocator` (and a speed run): its 12-megapixel part again, to see how far "
     "one run's figures move."),
    ("versions_large_photos", "Protection before and after the work at the photo's size was cut (the same files)",
     "python bench/versions.py --reference d17ce3c --name versions_large_photos",
     "Run alone on the machine; the reference (the package before the change) in the same run, each protection in "
     "a process of its own."),
    ("ray_cancel", "What cancelled Ray tasks leave: temporary files of atomic writes",
     "python bench/ray_cancel.py --trials 40",
     "Two tasks writing a file atomically in a loop on a local Ray instance, cancelled as `protect --ray` cancels "
     "its tasks on a stop; the files counted half a second after the tasks ended."),
    ("ray_cancel_before", "What cancelled Ray tasks left before the temporary file was made inside its cleanup "
     "(commit 6fbe573)",
     "`PYTHONPATH=<a checkout of 6fbe573> python bench/ray_cancel.py --trials 40 --name ray_cancel_before`",
     "The package before the fix, measured with the same script right after `ray_cancel`."),
    ("working_grid", "Where the steps compose the perturbed photo: working grid or the photo's own resolution",
     "not reproducible: `bench/working_grid.py` and the attacks' `grid` option were removed after this run "
     "(measured at commit 02e5275)",
     "The reason the steps compose the perturbed photo at its own resolution. Measured at commit 02e5275 "
     "(2026-12-02 00:41 UTC), after the database change by date; the file itself does not record which "
     "roxford5k-mini database it saw."),
    ("grey_photos", "Black-and-white photos: kept grey, and what the presets keep of their effect on them",
     "python bench/grey_photos.py --figure-against grey_photos_before",
     "Run after `grey_photos_before` (the figure compares the two). Grey inputs: the validation queries converted "
     "to grey and saved as grey JPEG q95 files. Seconds per photo not timed alone (tests ran beside the benchmark)."),
    ("grey_photos_before", "Black-and-white photos before they were kept grey (commit e7e899f)",
     "`PYTHONPATH=<a checkout of e7e899f> python bench/grey_photos.py --inputs grey --name grey_photos_before`",
     "The package before black-and-white photos were changed in grey (its path in the table), measured with the "
     "same script and the same grey inputs as `grey_photos`."),
    ("grey_photos_test", "Black-and-white photos, test split",
     "python bench/grey_photos.py --split test --inputs grey --name grey_photos_test",
     "The test split's first 8 queries in grey, as `grey_photos` does on the validation split. Seconds per photo "
     "not timed alone."),
    ("grey_photos_test_before", "Black-and-white photos before they were kept grey (commit e7e899f), test split",
     "`PYTHONPATH=<a checkout of e7e899f> python bench/grey_photos.py --split test --inputs grey "
     "--name grey_photos_test_before`",
     "The package before black-and-white photos were changed in grey, the same inputs as `grey_photos_test`."),
    ("candidates_viewcode_before_validation_quick_limit8",
     "`medium` before the views' changes of 2026-12-06 (commit 00ced56), validation split, quick suite",
     "`PYTHONPATH=<a checkout of 00ced56> python bench/trackers.py --split validation --quick --limit 8 "
     "--no-handcrafted --presets medium --name candidates_viewcode_before_validation_quick_limit8` (with no `medium` "
     "photos or descriptors cached)",
     "Every view's graph alive until one backward pass, a rotated view sampled at the photo's size. Its first two "
     "photos were protected while tests ran beside it: its s/photo is not a timing."),
    ("candidates_viewcode_graphs_validation_quick_limit8",
     "`medium` with each view's pass differentiated at once (commit 2b3e65b), validation split, quick suite",
     "`PYTHONPATH=<a checkout of 2b3e65b> python bench/trackers.py --split validation --quick --limit 8 "
     "--no-handcrafted --presets medium --name candidates_viewcode_graphs_validation_quick_limit8` (with no `medium` "
     "photos or descriptors cached)",
     "The objective and gradient of 00ced56, summed in another order: how far floating-point order alone moves "
     "the cells of `candidates_viewcode_before_validation_quick_limit8`."),
    ("candidates_viewcode_after_validation_quick_limit8",
     "`medium` with rotated views sampled at their own size too (commit 5158c8e), validation split, quick suite",
     "`PYTHONPATH=<a checkout of 5158c8e> python bench/trackers.py --split validation --quick --limit 8 "
     "--no-handcrafted --presets medium --name candidates_viewcode_after_validation_quick_limit8` (with no `medium` "
     "photos or descriptors cached)",
     "Both changes of 2026-12-06 (evening): the same queries as `candidates_viewcode_before_validation_quick_limit8`."),
    ("candidates_viewcode_final_validation_quick_limit8",
     "`medium` as shipped after the views' changes (commit d4c3ea0), validation split, quick suite",
     "`PYTHONPATH=<a checkout of d4c3ea0> python bench/trackers.py --split validation --quick --limit 8 "
     "--no-handcrafted --presets medium --name candidates_viewcode_final_validation_quick_limit8` (with no `medium` "
     "photos or descriptors cached)",
     "The same queries as `candidates_viewcode_before_validation_quick_limit8`. Run while the test suite ran beside it: "
     "its s/photo is not a timing."),
    ("speed_before_views_amd",
     "Speed of protection before the views' changes of 2026-12-06 (commit 00ced56), in bfloat16",
     "`PYTHONPATH=<a checkout of 00ced56> python bench/speed.py --parts time --photos 2 --presets low medium high "
     "--precisions bfloat16 --name speed_before_views_amd`",
     "Run alone, right before `speed_bfloat16_amd` on the same machine: the reference its times are compared with."),
    ("speed_before_phases_amd",
     "Speed of protection before the trunk's strided depthwise backward by phases (commit 5fb84eb), in bfloat16",
     "`PYTHONPATH=<a checkout of 5fb84eb> python bench/speed.py --parts time --photos 2 --presets low medium high "
     "--precisions bfloat16 --name speed_before_phases_amd`",
     "Run alone on the same machine right after `speed_phases_amd`: the reference its times are compared with. Its "
     "code stamp's `+changes` is a link to the shared work folder in that checkout, not a change of code."),
    ("speed_before_cast_amd",
     "Speed of protection before a photo's rotation was sampled on every thread and R-MAC searched a row-major copy "
     "(commit e08f336), in bfloat16",
     "`PYTHONPATH=<a checkout of e08f336> python bench/speed.py --parts time --photos 2 --presets low medium high "
     "--precisions bfloat16 --name speed_before_cast_amd`",
     "Run alone on the same machine an hour before `speed_amd` (whose bare passes ran 8-16 % slower): compare the two "
     "as protect / bare ratios."),
    ("speed_hugepages_amd", "Speed of protection with the huge pages advquery asks for, in bfloat16",
     "python bench/speed.py --parts time --photos 2 --presets low medium high --precisions bfloat16 "
     "--name speed_hugepages_amd",
     "Run alone on the machine (timed figures). Its code stamp's `+changes` is a docstring of "
     "`advquery/models/memory.py` edited while it ran, not a change of what it measured."),
]


def tracker_command(name: str, data: dict) -> str:
    """The command that wrote a tracker benchmark's results, read back from what they hold."""
    limit = re.search(r"_limit(\d+)", name)
    parts = ["python bench/trackers.py", f"--split {data['split']}"] + ["--quick"] * bool(data.get("quick")) \
        + ([f"--limit {limit.group(1)}"] if limit else []) + ["--no-handcrafted"] * ("handcrafted" not in data) \
        + ["--calibrate"] * ("calibration" in data)
    suite_edits = [e.spec for e in (QUICK_EDITS if data.get("quick") else EDITS)]
    if data["edits"] != suite_edits:
        parts.append("--edits " + " ".join(data["edits"]))
    suite_systems = [s.name for s in (QUICK_SYSTEMS if data.get("quick") else SYSTEMS)]
    if data["systems"] != suite_systems:
        parts.append("--systems " + " ".join(f"'{s}'" for s in data["systems"]))
    if list(data["sets"]) != ["low", "medium", "high"]:
        parts.append("--presets " + " ".join(data["sets"]))
    default = f"trackers_{data['split']}" + "_quick" * bool(data.get("quick")) + (limit.group(0) if limit else "")
    return " ".join(parts + ([f"--name {name}"] if name != default else []))


def other_section(name: str, data: dict) -> tuple[str, str, str]:
    """Title, command and note of a result without an entry in SECTIONS (those being produced now)."""
    if "chance" in data and "run" in data:  # bench/chance.py: a tracker run's cells against their chance level
        return (f"Chance level of each tracker cell: `{data['run']}`, {data['split']} split",
                f"python bench/chance.py {data['run']}", "")
    if "systems" in data and "sets" in data:  # bench/trackers.py: the presets, or candidates (bench/candidates.py)
        return (("The tracker suite" if name.startswith("trackers_") else "Candidate settings against the tracker suite")
                + f", {data['split']} split" + (", quick suite" if data.get("quick") else ""),
                tracker_command(name, data),
                (data["note"] + " " if "note" in data else "")
                + "Heat maps: `bench/results/" + name + "_<preset>.png`."
                + (" Calibration pairs of `advquery verify --trackers`: `bench/results/" + name
                   + "_calibration_points.json`." if "calibration" in data else ""))
    recorded = data.get("command") or data.get("settings", {}).get("command")  # scripts that record their command
    scale = re.fullmatch(r"scale_(\d+)", name)
    if scale:
        return (f"Search at scale: exact against IVF-PQ with {int(scale.group(1)):,} synthetic distractor descriptors",
                recorded or f"python bench/scale.py --n {scale.group(1)}",
                ("" if recorded else "The IVF-PQ settings (lists, bytes per row, nprobe, re-ranking) are those the "
                 "table states; ") + f"plot: `bench/results/{name}.png`.")
    if isinstance(recorded, str):
        return name.replace("_", " "), recorded, ""
    if name.startswith("speed") and isinstance(data.get("time", {}), dict):
        parts = [p for p in ("time", "effect") if p in data]
        photos = {r["photo"] for runs in data.get("time", {}).values() for r in runs}
        precisions = [p for p in ("float32", "bfloat16", "float16")
                      if any(k.endswith(f" {p}") for k in data.get("time", {}))]
        command = " ".join(["python bench/speed.py", f"--parts {','.join(parts)}"]
                           + [f"--photos {len(photos)}"] * bool(photos)
                           + ([f"--effect-limit {len(data['effect']['queries'])}"] if "effect" in data else [])
                           + [f"--precisions {' '.join(precisions)}"] * (len(precisions) == 1)
                           + [f"--threads {data['threads']}"]
                           * ("threads" in data) + [f"--name {name}"] * (name != "speed"))
        return ("Speed of protection: seconds per photo, network passes"
                + (", " + " against ".join(precisions) if len(precisions) > 1 else f", in {precisions[0]}"
                   if precisions else "")), command, \
            "Run alone on the machine (timed figures)."
    if name == "cluster_throughput" and isinstance(data.get("photos"), list):
        images = data.get("describe", {}).get("images")
        return ("Protecting and describing in one process, in two, and on Ray",
                f"python bench/cluster_throughput.py --photos {len(data['photos'])}"
                + (f" --images {images}" if isinstance(images, int) else ""), "")
    flat = re.fullmatch(r"flat_regions_(\w+)", name)
    if flat:
        return (f"Flat regions changed by each preset, {flat.group(1)} split",
                f"python bench/flat_regions.py --split {flat.group(1)}", "Figure: `docs/flat_regions.png`.")
    scripts = sorted((p.stem for p in Path(__file__).parent.glob("*.py") if name.startswith(p.stem)), key=len)
    command = f"python bench/{scripts[-1]}.py (its options are not recorded in the results file)" if scripts \
        else "not recorded in the results file"
    return name.replace("_", " "), command, ""


# What a result's file cannot say about itself, learnt after it was measured (its section's note ends with it).
def views_before(remeasured: str) -> str:
    """The note of a tracker run measured with the views before 5158c8e, naming the run that re-measured the same
    presets with today's views."""
    return ("Measured with the tracker views as they were before commit 5158c8e (2026-12-06 evening), which rotates "
            "and filters each view at its own size: the presets' outputs have changed in detail since; the same "
            f"presets re-measured with today's views: `{remeasured}`.")


LATER_NOTES = {
    "trackers_test_quick_thumbs": views_before("trackers_test_quick_ownsize"),
    "trackers_test_quick_low25": views_before("trackers_test_quick_ownsize"),
    "trackers_test_thumbs": views_before("trackers_test_ownsize"),
    "chance_trackers_test_thumbs": views_before("chance_trackers_test_ownsize"),
    "chance_trackers_test_quick_low25": views_before("chance_trackers_test_quick_ownsize"),
}


def results_names() -> list[str]:
    """Every result with a markdown table: SECTIONS' order first, then the others by name."""
    present = {p.stem for p in RESULTS.glob("*.md")} & {p.stem for p in RESULTS.glob("*.json")}
    known = [name for name, *_ in SECTIONS if name in present]
    return known + sorted(present - set(known))


def section(name: str) -> tuple[str, str]:
    """(day measured, markdown section) of one result."""
    data = json.loads((RESULTS / f"{name}.json").read_text())
    entry = next((s for s in SECTIONS if s[0] == name), None)
    title, command, note = entry[1:] if entry else other_section(name, data)
    note = " ".join(filter(None, (note, LATER_NOTES.get(name))))
    day = measured_on(name)
    body = baseline() if name == "baseline_retrieval" else (RESULTS / f"{name}.md").read_text().strip()
    body = re.sub(r"^#+ +", "#### ", body, flags=re.M)  # a result's own headings go below its section's
    reproduce = f"`{command}`" if command.startswith("python ") else command
    if "(its options" in command:
        reproduce = f"`{command.split(' (')[0]}` ({command.split(' (', 1)[1]}"
    lines = [f"### {title}", "", f"- File: `bench/results/{name}.md` (`.json`)", f"- Reproduce: {reproduce}",
             f"- Comparable with today's database: {comparability(day)}"]
    if data.get("code"):
        commit, _, changes = data["code"].partition("+")
        lines.append(f"- Code: commit `{commit}`" + " with changes not committed then" * bool(changes))
    if earlier := earlier_definitions(data):
        lines.append(f"- Definitions: {', '.join(f'`{p}`' for p in earlier)} measured with an earlier definition "
                     f"(the .json records it; git history has the code): the command above runs today's")
    return day, "\n".join(lines + ([f"- Note: {note}"] if note else []) + ["", body, ""])


def earlier_definitions(data: dict) -> list[str]:
    """The shipped presets, and the leave-one-model-out sets that follow them, a tracker result measured under a
    recorded definition other than today's."""
    sets = data.get("sets")
    if not isinstance(sets, dict):
        return []
    return [label for label, info in sets.items()
            if (label in STRENGTHS or LEFT_OUT in label) and isinstance(info, dict) and info.get("preset") is not None
            and not defined_as_today(label, info["preset"])]


def protection_table() -> str:
    """The README's table: each preset against the quick tracker suite, with the split and machine stated."""
    for split in PROTECTION_SPLITS:
        runs = {p.stem: json.loads(p.read_text()) for p in RESULTS.glob(f"trackers_{split}_quick*.json")
                if not p.stem.endswith("_calibration_points")}
        if runs:
            return render_protection(runs, preset_sources(runs))
    return ("The tracker benchmark's results are not there yet (`python bench/trackers.py --split test --quick` "
            "writes them); the earlier measurements are in [docs/benchmarks.md](docs/benchmarks.md).")


def preset_sources(runs: dict[str, dict]) -> dict[str, str]:
    """{preset: the run its row comes from}. The runs considered measured the same queries against the same
    suite as the run with the most queries; of those, each preset's row comes from the latest that measured its
    definition of today (else, until it is re-measured, from the latest that measured it at all). A preset
    re-measured after a change of its definition or of the code so replaces its row, on the same queries and
    trackers, without re-running the others (latest: :func:`measured_at`)."""
    when = {n: measured_at(n, runs[n]) for n in runs}
    widest = max(runs, key=lambda n: (len(runs[n]["queries"]), when[n], n))
    def suite(name):
        return runs[name]["queries"], runs[name]["systems"], runs[name]["edits"]
    comparable = sorted((n for n in runs if suite(n) == suite(widest)), key=lambda n: (when[n], n))
    measured = [(preset, name, defined_as_today(preset, info.get("preset")))
                for name in comparable for preset, info in runs[name]["sets"].items() if preset in STRENGTHS]
    latest = {preset: name for preset, name, _ in measured}
    return latest | {preset: name for preset, name, today in measured if today}


def timed_seconds() -> tuple[dict[str, float], str, str]:
    """Seconds per photo of each preset timed alone in the precision ``protect --precision auto`` ran on the
    machine of bench/speed.py, that precision, and the machine (with the photos timed and the file). All from one
    speed run (``speed.json`` or ``speed_*.json``): the latest that recorded its definitions and timed a preset as
    defined today; its presets whose definition changed since, or that it did not time, have none."""
    found = []
    for path in RESULTS.glob("speed*.json"):
        if "_before_" in path.stem:  # an older package timed as the reference of a change, not today's
            continue
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("time"), dict):
            continue
        auto, changed = data.get("auto"), changed_presets(data, "time")
        if changed is None:  # definitions not recorded
            continue
        timed = {key: rows for key, rows in data["time"].items()
                 if key.split()[0] in STRENGTHS and key.split()[0] not in changed and key.split()[1:] == [auto]}
        if timed:
            found.append((measured_at(path.stem, data), path.stem, data, timed))
    if not found:
        return {}, "", ""
    _, name, data, timed = max(found, key=lambda f: f[:2])
    photos = {r["photo"] for rows in timed.values() for r in rows}
    return ({key.split()[0]: sum(r["seconds"] for r in rows) / len(rows) for key, rows in timed.items()},
            data["auto"], f"{data['machine']} ({len(photos)} validation photo{'s' * (len(photos) != 1)} at 1024 px, "
                          f"`bench/results/{name}.md`)")


def wi_shares(data: dict, label: str, models_left_out: list[str] = ()) -> list[float]:
    """A set's WI cells as shares of the original's, over every system but those of ``models_left_out``."""
    maps = data["map"]
    return [maps[label]["wi"][s][e] / maps["original"]["wi"][s][e] for s in data["systems"]
            if system(s).model not in models_left_out for e in data["edits"]]


def held_out(data: dict, preset: str) -> tuple[list[float], list[str]]:
    """WI shares of the cells whose model a preset's protection never saw, and the sets they come from: the
    preset's own cells of the models it does not attack, and model M's cells of each ``PRESET-without-M`` set
    (leave one model out), all in the same run. Runs that did not record the attacked models give none, nor
    leave-one-model-out sets of a definition other than today's (of a preset changed since)."""
    shares, sources = [], []
    for label, info in data["sets"].items():
        if (label != preset and not label.startswith(f"{preset}{LEFT_OUT}")) or "models" not in info:
            continue
        if label != preset and not defined_as_today(label, info.get("preset")):
            continue
        cells = wi_shares(data, label, info["models"])
        shares += cells
        sources += [label] if cells else []
    return shares, sources


def held_out_note(sets: list[tuple[str, str | None]]) -> str:
    """What the held-out column measures, from the (set, the other run it comes from or None) pairs."""
    if not sets:
        return "Held-out model: not measured in this run."

    def described(label: str, other: str | None) -> str:
        cells = ("models other than those it attacks" if LEFT_OUT not in label else label.partition(LEFT_OUT)[2])
        return f"`{label}`: its cells of {cells}" + (f", on {other}" if other else "")
    return ("Held-out model: median over the WI cells of the models a preset was not computed against, as a "
            "tracker with a model of its own would be (" + "; ".join(described(*s) for s in sets) + ").")


def held_out_elsewhere(runs: dict[str, dict], preset: str) -> tuple[list[float], list[str], str | None]:
    """:func:`held_out` from the run of the same split with the most queries that has held-out cells of
    ``preset`` (leave-one-model-out sets cost a protection each, so the widest run may not repeat them), and
    which queries those are."""
    found = {name: held_out(data, preset) for name, data in runs.items()}
    candidates = [(len(runs[name]["queries"]), measured_at(name, runs[name]), name)
                  for name, (shares, _) in found.items() if shares]
    if not candidates:
        return [], [], None
    count, _, name = max(candidates)
    return *found[name], f"the {count} queries of `{name}`"


def seconds_note(presets: list[str], timed: dict[str, float], precision: str, timed_on: str, machines: str) -> str:
    """Where the s/photo column comes from: the speed benchmark for the presets timed alone with today's
    definition, the tracker run itself for the others."""
    alone = [p for p in presets if p in timed]
    shared = [p for p in presets if p not in timed]
    parts = []
    if alone:
        parts.append(f"of {', '.join(alone)} on {timed_on}, timed alone in {precision} (what `protect` runs there)")
    if shared:
        parts.append(f"of {', '.join(shared)} from the tracker run on {machines}, which other jobs may have shared"
                     + (" (changed since they were timed alone)" if alone else ""))
    return "Seconds per photo " + "; seconds per photo ".join(parts)


def render_protection(runs: dict[str, dict], sources: dict[str, str]) -> str:
    """The table and its note; each preset's row (and its held-out column) from its run in ``sources``."""
    rows, held_out_sets = [], []
    timed, precision, timed_on = timed_seconds()
    for preset in (p for p in STRENGTHS if p in sources):
        data = runs[sources[preset]]
        info = data["sets"][preset]
        wi, bb = info["summary"]["wi"], info["summary"]["bb"]
        shares = wi_shares(data, preset)
        blocked = sum(v <= BLOCKED for v in shares)
        unseen, sets = held_out(data, preset)
        other = None
        if not unseen:
            unseen, sets, other = held_out_elsewhere(runs, preset)
        held_out_sets += [(s, other) for s in sets]
        label = f"`{preset}`" if defined_as_today(preset, info.get("preset")) else f"`{preset}` (an earlier definition)"
        rows.append([label, f"{info['ssim']:.3f}",
                     f"{100 * info['flat_changed']:.0f} ({100 * info['flat_changed_resave']:.0f})",
                     f"{timed.get(preset, info['seconds']):.0f}", f"{blocked} / {len(shares)}",
                     *(f"{100 * wi[k]:.0f}" for k in ("median", "p90", "worst")), f"{100 * bb['median']:.0f}",
                     f"{100 * statistics.median(unseen):.0f}" if unseen else "-"])
    # The runs share split, queries and suite (preset_sources); the machine and the source are stated per run.
    used = list(dict.fromkeys(sources.values()))
    machines = " and ".join(dict.fromkeys(runs[n]["machine"] for n in used))
    source = "; ".join(f"`bench/results/{n}.md`" + (f" ({', '.join(p for p in sources if sources[p] == n)})"
                                                    if len(used) > 1 else "") for n in used)
    split = data["split"]
    n_queries = len(data["queries"])
    which = ("the **test** split (queries never used for a choice)" if split == "test" else
             f"the **{split}** split, the one every choice was tuned on, so these figures may flatter the presets; "
             "the test-split figures are pending")
    cells = f"{len(data['systems'])} systems x {len(data['edits'])} edits"
    return "\n".join([
        markdown_table(["preset", "SSIM", "flat changed % (re-save)", "s/photo", "trackers blocked", "WI median %",
                        "WI p90 %", "WI worst %", "BB median %", "held-out model WI median %"], rows), "",
        f"Percentages: retrieval (mAP Medium) a tracker still gets from the protected photo, as % of what it gets "
        f"from the original (0 % = blocked, 100 % = no protection). Measured on {which}: {n_queries} "
        f"roxford5k-mini queries, protected as `advquery protect` does (1024 px, JPEG q95 output), against the "
        f"quick tracker suite ({cells}: Lite0, Lite1 and Lite2, other working sizes and poolings; crops, flips, "
        f"rotations, re-compression), on {machines}; trackers blocked: the suite's WI cells left at most {100 * BLOCKED:.0f} % of "
        f"their retrieval; median, 90th percentile and worst cell over the suite for whole-image (WI) queries, "
        f"median for bounding-box (BB) queries, the selection of the landmark a tracker would cut out. "
        + held_out_note(held_out_sets) + " Flat "
        "changed: share of the flat pixels (sky, walls) changed by more than one grey level, and in brackets the "
        "same for a plain JPEG q95 re-save of the original. " + seconds_note(list(sources), timed, precision, timed_on,
                                                                             machines)
        + f". Source: {source}; every table: "
        f"[docs/benchmarks.md](docs/benchmarks.md)."])


def benchmarks_page() -> str:
    sections = [section(name) for name in results_names()]
    index = markdown_table(["results", "measured", "comparable with today's database"],
                           [[f"[`{name}`](#{anchor(body)})", day, comparability(day).split(":")[0]]
                            for name, (day, body) in zip(results_names(), sections)])
    after = [body for day, body in sections if day > UNIFORM_DATABASE]
    before = [body for day, body in sections if day <= UNIFORM_DATABASE]
    return "\n".join([
        "# Benchmarks", "",
        "<!-- Generated by `python bench/readme_tables.py` from bench/results/*.json: edit the script, not this "
        "file. -->", "",
        "Every results table, each with the command that reproduces it (run from the repository root) and the "
        "machine that measured it. `make bench` reruns the benchmarks and then `bench/readme_tables.py`, which "
        "writes this page and the README's table; protected photos are kept in `bench/.work` and database "
        "descriptors in `bench/.cache`, so interrupted runs resume. Data: `../shared/data` (or `$ADVQUERY_DATA`). "
        "What the results mean and which decisions they led to: [methods.md](methods.md).", "",
        f"**Figures measured before {UNIFORM_DATABASE} are not comparable with later ones.** On that day the "
        "roxford5k-mini database was made uniform (every database image 768 px, JPEG quality 85). Before, the 156 "
        "positives were 1024 px originals and the 840 distractors 768 px re-encodes, so an image's resolution and "
        "compression told positives from distractors: original mAPs were inflated, and a protection's effect "
        "under re-compression and downscaling read much stronger than it is (`../shared/data/README.md`). Those "
        "results stay below as the record of what was decided on them, each marked; rerun one before quoting it.",
        "", "Whether a file was measured before: the `measured` field of its JSON where it has one, else the day "
        "of the last commit that changed it, else (not committed yet) the file's day.", "",
        index, "",
        "## Measured on today's database", "",
        *(after or ["None yet.", ""]),
        f"## Measured before {UNIFORM_DATABASE} (not comparable)", "",
        *before]).rstrip() + "\n"


def anchor(body: str) -> str:
    """GitHub's anchor of a section's heading."""
    heading = body.splitlines()[0].lstrip("# ").lower()
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def readme_text() -> str:
    """The README with its table block rewritten from the results."""
    head, rest = README.read_text().split(START)
    return f"{head}{START}\n{protection_table()}\n{END}{rest.split(END)[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming the files that differ from what bench/results/ gives")
    args = parser.parse_args()
    generated = {BENCHMARKS: benchmarks_page(), README: readme_text()}
    if args.check:
        stale = [str(path.relative_to(ROOT)) for path, text in generated.items() if path.read_text() != text]
        if stale:
            raise SystemExit(f"out of date: {', '.join(stale)} (run python bench/readme_tables.py)")
        return
    for path, text in generated.items():
        path.write_text(text)


if __name__ == "__main__":
    main()
