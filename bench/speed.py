"""Speed of protection: seconds per photo, network passes, overhead beside them, float32 against bfloat16.

Two parts, one results file (``bench/results/speed.json`` / ``.md``):

- ``time`` (run alone on the machine: it takes ``/work``-wide nothing, but two heavy jobs at once make
  every figure wrong): each preset protects the same ``--photos`` validation query photos (working size 1024 px,
  JPEG q95 output, as ``advquery protect`` does) with ``advquery.protection.protect_photo`` in every
  precision, in one run. Every network pass the protection makes is recorded (model, input shape, with
  or without backward), then replayed bare (random input of that shape, same precision, forward and,
  where the protection differentiated it, backward): protect time / bare time is the overhead ratio. The
  replay runs twice: warm (the shapes just met) and fresh (each shape new to the process, as every drawn view
  is to the protection), which tells whether meeting a shape for the first time is part of the overhead.
- ``effect``: the validation split's scored queries (``--effect-limit``: the first N) protected with each preset in
  every precision; mAP Medium of the whole-image queries (Lite0 GeM at 1024) from the written files,
  so float32 and bfloat16 are compared at the same effect. Resumable (files kept in ``bench/.work``).

Run: ``python bench/speed.py [--parts time,effect] [--photos 3] [--threads 2]``.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from candidates import CANDIDATES, defined_as_today, setting
from common import CACHE, RESULTS, WORK, markdown_table, setting_digest, split_dataset, write_results

from advquery.evaluation.runner import evaluate
from advquery.io import read_photo
from advquery.models import DescriptorModel, load_model
from advquery.models.memory import reused_memory
from advquery.models.precision import autocast, autocast_dtype, precision_name
from advquery.protection import OTHER_MODELS, STRENGTHS, attack_model, protect_photo

SIZE = 1024


class PassRecorder:
    """Records every trunk pass of the descriptor models in use: (model, input shape, differentiated)."""

    def __init__(self):
        self.passes: list[tuple[str, tuple[int, ...], bool]] = []
        self._handles = []

    def watch(self, model: DescriptorModel) -> None:
        self._handles.append(model.features.register_forward_pre_hook(
            lambda _, inputs: self.passes.append((model.name, tuple(inputs[0].shape), torch.is_grad_enabled()))))

    def close(self) -> None:
        for h in self._handles:
            h.remove()


@reused_memory()  # as the attack's passes do (advquery.models.memory)
def bare_seconds(models: dict[str, DescriptorModel], passes, dtype, used_shapes: set | None = None) -> float:
    """Seconds of the recorded passes alone: the trunk on a random input of each shape, in ``dtype``,
    with a backward pass where the protection made one.

    With ``used_shapes`` (every input shape the process has run so far; updated here) each distinct recorded
    shape is replaced by one a few rows taller that no pass has had yet, so the kernels meet it for the first
    time, as the protection's passes met the views it drew; a shape the protection repeated (the whole photo,
    every step) is repeated in the replay too. Without it the replay follows the protection and meets every
    shape warm."""
    generator = torch.Generator().manual_seed(0)
    stand_ins: dict[tuple[int, ...], tuple[int, ...]] = {}
    total = 0.0
    for name, shape, backward in passes:
        if used_shapes is not None:
            if shape not in stand_ins:
                n, c, h, w = shape
                taller = ((n, c, h + k, w) for k in range(1, h + 1))
                stand_ins[shape] = next(t for t in taller if t not in used_shapes)
                used_shapes.add(stand_ins[shape])
            shape = stand_ins[shape]
        features, device = models[name].features, models[name].device
        x = torch.rand(shape, generator=generator).to(device, memory_format=torch.channels_last)
        synchronize(device)
        start = time.perf_counter()
        with torch.set_grad_enabled(backward):
            x.requires_grad_(backward)
            with autocast(dtype, x.device):
                out = features(x)
            if backward:
                out.float().sum().backward()
        synchronize(device)
        total += time.perf_counter() - start
    return total


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs it asynchronously), so that the clock reads what it cost."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def all_models() -> dict[str, DescriptorModel]:
    return {name: load_model(name) for name in
            ("efficientnet-lite0-gem", "efficientnet-lite1-gem", "efficientnet-lite2-gem")}


def timing(args, photos: list[Path], models: dict) -> dict:
    out = {}
    used_shapes: set[tuple[int, ...]] = set()
    for preset in args.presets:
        for precision in args.precisions:
            dtype = autocast_dtype(precision, models["efficientnet-lite0-gem"])
            recorder = PassRecorder()
            for m in {*models.values(), *attack_model(models["efficientnet-lite0-gem"], OTHER_MODELS).members}:
                recorder.watch(m)  # the other models of medium and high are loaded here, not while timing
            warm_up = WORK / "speed" / "time" / "warm-up.jpg"  # first passes of each shape set the kernels up
            protect_photo(read_photo(photos[0]), warm_up, models["efficientnet-lite0-gem"], "JPEG", 95,
                          strength=setting(preset), size=SIZE, seed=0, steps=2, precision=precision)
            used_shapes |= {shape for _, shape, _ in recorder.passes}
            rows = []
            for photo in photos:
                recorder.passes.clear()
                target = WORK / "speed" / "time" / f"{preset}-{precision}" / f"{photo.stem}.jpg"
                record = protect_photo(read_photo(photo), target, models["efficientnet-lite0-gem"], "JPEG", 95,
                                       strength=setting(preset), size=SIZE, seed=0, precision=precision)
                passes = list(recorder.passes)
                used_shapes |= {shape for _, shape, _ in passes}
                bare_fresh = bare_seconds(models, passes, dtype, used_shapes)
                bare = bare_seconds(models, passes, dtype)
                rows.append({"photo": photo.stem, "seconds": record.seconds, "steps": record.steps,
                             "passes": sum(b for *_, b in passes), "forward_only": sum(not b for *_, b in passes),
                             "bare_seconds": bare, "bare_fresh_seconds": bare_fresh, "ssim": record.ssim,
                             "similarity": record.similarity})
                print(preset, precision, rows[-1], flush=True)
            recorder.close()
            out[f"{preset} {precision}"] = rows
    return out


def effect(args, model) -> dict:
    val = split_dataset("validation", args.effect_limit)
    base = evaluate(val, model, SIZE, queries="wi", protocols=("medium",), cache_dir=CACHE, progress=False)
    out = {"queries": [q.stem for q in val.queries], "original": {"wi_medium": float(base.results["medium"].map)}}
    for preset in args.presets:
        for precision in args.precisions:
            folder = WORK / "speed" / "effect" / f"{preset}-{setting_digest(setting(preset))}-{precision}"
            stats = []
            for photo in val.queries:
                target, stats_file = folder / f"{photo.stem}.jpg", folder / f"{photo.stem}.json"
                if not stats_file.is_file():
                    record = protect_photo(read_photo(photo), target, model, "JPEG", 95, strength=setting(preset),
                                           size=SIZE, seed=0, precision=precision)
                    stats_file.write_text(json.dumps(record.to_json()))
                stats.append(json.loads(stats_file.read_text()))
            r = evaluate(val, model, SIZE, queries="wi", protocols=("medium",), query_dir=folder, cache_dir=CACHE,
                         progress=False)
            out[f"{preset} {precision}"] = {"wi_medium": float(r.results["medium"].map),
                                            "ssim": float(np.mean([s["ssim"] for s in stats])),
                                            "seconds": float(np.mean([s["seconds"] for s in stats]))}
            print(preset, precision, out[f"{preset} {precision}"], flush=True)
    return out


def changed_presets(results: dict, part: str) -> list[str] | None:
    """The presets of a part whose definition changed since it was measured (None: definitions not recorded)."""
    recorded = results.get(f"{part}_presets")
    if recorded is None:
        return None
    return [p for p, definition in recorded.items() if not defined_as_today(p, definition)]


def definitions_note(results: dict, part: str) -> str:
    """Whether a part was measured with today's definitions of the presets it holds."""
    changed = changed_presets(results, part)
    if changed is None:
        return "Preset definitions: not recorded; rerun to measure today's presets."
    return ("Preset definitions: today's." if not changed else
            f"Preset definitions: {', '.join(changed)} changed since; rerun to measure today's.")


def render(results: dict) -> str:
    lines = [f"Presets at working size {SIZE} px (the long side of these roxford5k-mini query photos of the "
             f"validation split, so the photo is attacked at its own resolution), JPEG q95 "
             f"output, {results['threads']} threads, nothing else running. Seconds: `protect_photo` end to end "
             "(attack, writing, measuring the written file). Passes: trunk passes with a backward pass (views x "
             "steps); bare: those passes and the forward-only ones (describing the original and the written "
             "file) replayed alone on random inputs of the same shapes, once right after the protection (warm: every "
             "shape's kernels set up) and once with each shape a few rows taller, new to the process (fresh: the "
             "kernels meet each view's shape for the first time, as the protection's passes did)."
             + (f" `--precision auto` runs {results['auto']} on this machine." if "auto" in results else ""), ""]
    if "time" in results:
        rows = []
        for key, recs in results["time"].items():
            preset, precision = key.split()
            secs = float(np.mean([r["seconds"] for r in recs]))
            bare = float(np.mean([r["bare_seconds"] for r in recs]))
            fresh = float(np.mean([r["bare_fresh_seconds"] for r in recs]))
            fp32 = results["time"].get(f"{preset} float32")
            speedup = float(np.mean([r["seconds"] for r in fp32])) / secs if fp32 else None
            rows.append([preset, precision, round(secs, 1), round(float(np.mean([r["passes"] for r in recs])), 1),
                         round(float(np.mean([r["steps"] for r in recs])), 1), round(bare, 1), round(secs / bare, 3),
                         round(fresh, 1), round(secs / fresh, 3),
                         "" if speedup is None else round(speedup, 2)])
        lines += [f"**Time** ({len(next(iter(results['time'].values())))} photos: "
                  f"{', '.join(r['photo'] for r in next(iter(results['time'].values())))})", "",
                  markdown_table(["preset", "precision", "s/photo", "passes/photo", "steps", "bare s (warm)",
                                  "protect / bare warm", "bare s (fresh shapes)", "protect / bare fresh",
                                  "speed-up vs float32"], rows), "", definitions_note(results, "time"), ""]
    if "effect" in results:
        e = dict(results["effect"])
        queries = e.pop("queries")
        rows = [[k, round(100 * v["wi_medium"], 2), round(v.get("ssim", 1), 4), round(v.get("seconds", 0), 1)]
                for k, v in e.items()]
        lines += [f"**Effect** (validation split: its first {len(queries)} standard queries with positives; WI mAP "
                  "Medium of the protected queries, Lite0 GeM at 1024; seconds per photo on a machine that may have "
                  "been shared)", "", markdown_table(["preset / precision", "WI mAP Medium %", "SSIM", "s/photo"], rows), "",
                  definitions_note(results, "effect"), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", default="time,effect")
    parser.add_argument("--photos", type=int, default=3, help="validation photos timed")
    parser.add_argument("--effect-limit", type=int, help="only the validation split's first N scored queries")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--presets", nargs="+", default=list(STRENGTHS), choices=[*STRENGTHS, *CANDIDATES],
                        help="presets, or candidates of bench/candidates.py")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--name", default="speed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = RESULTS / f"{args.name}.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results["threads"] = args.threads
    parts = set(args.parts.split(","))
    models = all_models()
    # What ``--precision auto`` runs on this machine (measured once per machine: advquery.models.precision).
    results["auto"] = precision_name(autocast_dtype("auto", models["efficientnet-lite0-gem"]))
    definitions = {preset: repr(setting(preset)) for preset in args.presets}
    if "time" in parts:
        results["time"] = timing(args, split_dataset("validation", args.photos).queries, models)
        results["time_presets"] = definitions
    if "effect" in parts:
        results["effect"] = effect(args, models["efficientnet-lite0-gem"])
        results["effect_presets"] = definitions
    write_results(args.name, results, render(results))


if __name__ == "__main__":
    main()
