"""Perceptual protection methods on roxford5k-mini: the thesis's Tables 4.1 and 4.2 and its curves
(Sweere 2019) for PIRE, CV-PIRE, SD-PIRE and every perturbation method of ``advquery protect``.

Each standard query photo (58; ``--limit N``: the first N) is protected whole at the working size,
saved as JPEG quality 95 and decoded again. mAP (Medium, Hard) with bounding-box (BB) and whole-image
(WI) queries is taken over the protected queries; quality (SSIM, PSNR, L-infinity and mean absolute
change in grey levels) against the original photo; seconds per photo of the attack alone. Parts:
- tables: thesis settings, the bare optimisation (T steps, no early stopping, no random edits, the
  retrieval model alone): PIRE at the paper budget, CV-PIRE and SD-PIRE at m = 50, every other
  perturbation method of ``advquery.protection.METHODS`` at its default budget; and what ``advquery
  protect`` gives: every preset of each method (CV-/SD-PIRE: the default one; their presets differ only in
  early stopping). Also the quality on the photos with published CV-PIRE outputs, next to those outputs.
- iterations: WI Medium mAP after 10, 20, ..., T steps of the thesis-setting runs (snapshots of one run).
- m: CV-PIRE and SD-PIRE at m = 10 ... 60 (Table 4.2): mAP WI and BB Medium, SSIM.
- curves: WI Medium mAP against SSIM over a budget range per method, thesis settings (``CURVE_BUDGETS``;
  for methods not listed there, ``make_attack(eps_levels=...)`` over ``OTHER_BUDGETS`` grey levels, e.g.
  masked-pire's flat-region budget; ssim-pire's budget is its SSIM price ``ssim_weight`` at the bound of the ``low`` preset).
Attacks come from ``advquery.protection.make_attack``. A run's protected files live in a folder named by
the attack's settings, so parts share them and an interrupted run resumes (bench/.work/perceptual_methods).

Run: ``python bench/perceptual_methods.py [--size 512] [--parts tables,iterations,m,curves]``.
"""
import argparse
import hashlib
import json
from dataclasses import is_dataclass

import matplotlib
import numpy as np
from common import (CVPIRE_PUBLISHED, DATA_ROOT, PAPER_EPS_LEVELS, RESULTS, WORK, jpeg_resave_quality,
                    markdown_table, mean_quality, protect_resumable, published_cvpire_quality, query_maps,
                    write_results)

from advquery.attacks import PerturbationAttack
from advquery.evaluation.datasets import load_dataset
from advquery.io import read_photo
from advquery.models import load_model
from advquery.protection import DEFAULT_STRENGTH, METHODS, STRENGTHS, THESIS_M, THESIS_STEPS, make_attack
from advquery.quality import quality_report

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

PARTS = ("tables", "iterations", "m", "curves")
THESIS_METHODS = ("pire", "cv-pire", "sd-pire")
MAP_METHODS = ("cv-pire", "sd-pire")  # thesis maps: the preset contributes its early stopping only
M_VALUES = (10, 20, 30, 40, 50, 60)
CURVE_BUDGETS = {"ssim-pire": (60, 150, 300, 600), "pire": (1, 2, 3, 4, 6), "masked-pire": (0.5, 0.75, 1, 2, 3, 4, 6), "cv-pire": (10, 20, 30, 50),
                 "sd-pire": (10, 20, 30, 50)}
OTHER_BUDGETS = (1, 2, 3, 4, 6)
WEIGHT_BUDGETS = ("ssim-pire",)  # curve budget: the SSIM price (ssim_weight) at the bound of WEIGHT_STRENGTH
WEIGHT_STRENGTH = "low"
MAP_KEYS = ("bb_medium", "bb_hard", "wi_medium", "wi_hard")


class Bench:
    """The dataset, the model, the photos and the results so far (``payload``), for one set of options."""

    def __init__(self, args, payload: dict):
        self.args, self.payload = args, payload
        self.model = load_model()
        self.std = load_dataset("roxford5k-mini", DATA_ROOT)
        self.photos = list(self.std.queries[:args.limit])
        self.idx = list(range(len(self.photos)))
        self.originals = {p: read_photo(p).rgb for p in self.photos}
        self.cv_names = {p.stem for p in CVPIRE_PUBLISHED.glob("*.jpg")}
        self.methods = [m for m in METHODS if isinstance(make_attack(self.model, m), PerturbationAttack)]
        if "original" not in payload:
            payload.update(original=query_maps(self.std, self.model, args.size, self.idx),
                           jpeg_resave=jpeg_resave_quality(self.originals.values()),
                           published_cvpire=published_cvpire_quality(), n_queries=len(self.photos),
                           model=self.model.name)

    def attack(self, method: str, eps_levels: float | None = None, strength: str = DEFAULT_STRENGTH,
               thesis: bool = True, ssim_weight: float | None = None):
        """``make_attack``'s attack; ``thesis``: the bare optimisation (T steps, no early stopping, no random
        edits, the retrieval model alone) with snapshots for the iterations plot; else the preset exactly as
        ``advquery protect`` runs it."""
        a = self.args
        attack = make_attack(self.model, method=method, strength=strength, eps_levels=eps_levels,
                             ssim_weight=ssim_weight, steps=a.steps if thesis else None, size=a.size, seed=a.seed,
                             jpeg_quality=None if thesis else 95)  # protect's attack for a JPEG q95 output
        if thesis:
            attack.model, attack.edits, attack.target_similarity, attack.patience = self.model, None, None, None
            attack.snapshot_every = min(a.every, a.steps)
        return attack

    def run(self, method: str, **options) -> str:
        """Protect and measure the photos with one attack (once per results file); its run key."""
        attack = self.attack(method, **options)
        config = {"class": type(attack).__name__, "model": attack.model.name,
                  **{k: v for k, v in vars(attack).items() if k not in ("snapshot_every", "stats")
                     and (is_dataclass(v) or isinstance(v, (int, float, str, bool, tuple, type(None))))}}
        for option, default in (("coarseness", 1), ("ssim_weight", 0)):
            if config[option] == default:  # left out so that runs keyed before the option keep their key
                del config[option]
        if attack.codec is not None:  # a JPEG in the loop (protect's attack for a JPEG output)
            config["codec"] = {"jpeg_quality": attack.codec.keywords["quality"]}
        key = f"{method}-{hashlib.sha256(json.dumps(config, sort_keys=True, default=repr).encode()).hexdigest()[:10]}"
        if key in self.payload["runs"]:
            return key
        folder = WORK / "perceptual_methods" / key
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config, indent=1, default=repr))
        every = attack.snapshot_every
        ks = list(range(every, attack.steps + 1, every)) if every else []

        def targets(photo):
            return {"final": folder / "jpg95" / f"{photo.stem}.jpg",
                    **{k: folder / "snap" / str(k) / f"{photo.stem}.jpg" for k in ks}}

        stats = protect_resumable(attack, self.photos, self.originals, key, folder / "stats", targets,
                                  lambda x: {"final": attack.render(x, attack.perturbation),
                                             **{k: attack.render(x, v) for k, v in attack.snapshots}})
        qual = {p: quality_report(self.originals[p], read_photo(targets(p)["final"]).rgb) for p in self.photos}
        seconds, steps = (sum(s[k] for s in stats) for k in ("seconds", "steps"))
        cv_photos = [q for p, q in qual.items() if p.stem in self.cv_names]
        self.payload["runs"][key] = {
            **query_maps(self.std, self.model, self.args.size, self.idx, folder / "jpg95"),
            **mean_quality(qual.values()),
            "cvpire_photos": mean_quality(cv_photos) if cv_photos else None, "n_cvpire_photos": len(cv_photos),
            "seconds_per_photo": seconds / len(stats), "steps_per_photo": steps / len(stats),
            "seconds_per_step": seconds / max(steps, 1), "snapshot_steps": ks}
        return key

    def iterations(self, key: str) -> str:
        """Measure WI Medium mAP of a run's snapshots (once); its key."""
        run, folder = self.payload["runs"][key], WORK / "perceptual_methods" / key
        if "iterations" not in run:
            run["iterations"] = [[k, query_maps(self.std, self.model, self.args.size, self.idx,
                                                folder / "snap" / str(k), queries=("wi",),
                                                protocols=("medium",))["wi_medium"]] for k in run["snapshot_steps"]]
        return key

    def thesis_settings(self) -> list[tuple[str, str, dict]]:
        """(label, method, options) of the thesis-setting rows: T steps, no early stopping."""
        t = self.args.steps
        return [(f"PIRE paper budget ({PAPER_EPS_LEVELS:.2f} levels), T={t}", "pire",
                 {"eps_levels": PAPER_EPS_LEVELS}),
                (f"CV-PIRE m={THESIS_M}, T={t}", "cv-pire", {"eps_levels": THESIS_M}),
                (f"SD-PIRE m={THESIS_M}, T={t}", "sd-pire", {"eps_levels": THESIS_M})] + \
            [(f"{m} default budget, T={t}", m, {}) for m in self.methods if m not in THESIS_METHODS]

    def part(self, name: str) -> None:
        """Run one part; its rows refer to run keys in ``payload['runs']``."""
        parts = self.payload["parts"]
        if name == "iterations":
            parts[name] = [[label, self.iterations(self.run(m, **o))] for label, m, o in self.thesis_settings()]
        elif name == "tables":
            rows = [[label, self.run(m, **o)] for label, m, o in self.thesis_settings()]
            rows += [[preset_label(m, s), self.run(m, strength=s, thesis=False)] for m in self.methods
                     for s in ((DEFAULT_STRENGTH,) if m in MAP_METHODS else STRENGTHS)]
            parts[name] = rows
        elif name == "m":
            parts["m"] = {m: [[v, self.run(m, eps_levels=v)] for v in M_VALUES] for m in ("cv-pire", "sd-pire")}
        else:
            budgets = self.args.curve_budgets or {m: CURVE_BUDGETS.get(m, OTHER_BUDGETS) for m in self.methods}
            parts["curves"] = {m: [[b, self.run(m, **curve_options(m, b))] for b in bs] for m, bs in budgets.items()}


def curve_options(method: str, budget: float) -> dict:
    """``Bench.run`` options of one curve point: a bound in grey levels, or ssim-pire's SSIM price."""
    if method in WEIGHT_BUDGETS:
        return {"ssim_weight": budget, "strength": WEIGHT_STRENGTH}
    return {"eps_levels": budget}


def preset_label(method: str, strength: str) -> str:
    """Table label of a method at a preset, as ``advquery protect --method M --strength S`` runs it."""
    p = STRENGTHS[strength]
    if method in MAP_METHODS:
        return f"{method}, `protect` {strength} (m={THESIS_M}, <= {THESIS_STEPS} steps, early stop)"
    extras = ", tracker views" * bool(p.views) + f", + {len(p.models)} models" * bool(p.models)
    budget = p.budget_levels(method)
    levels = f"{budget:g} grey level" + "s" * (budget != 1) + f", SSIM price {p.ssim_weight:g}" * (method == "ssim-pire")
    stops = p.patience is not None or method != "ssim-pire"  # ssim-pire stops on patience alone
    return f"{method}, `protect` {strength} ({levels}, <= {p.steps} steps{', early stop' * stops}{extras})"


def render(payload: dict, name: str) -> None:
    """Write the markdown tables and the plots of everything measured so far."""
    runs, parts, orig = payload["runs"], payload["parts"], payload["original"]

    def pct(v):
        return round(100 * v, 2)

    def quality(q):
        return [round(q["ssim"], 4), round(q["psnr"], 2), round(q["linf"], 1), round(q["mean_abs_change"], 2)]

    text = [f"{payload['model']}, working size {payload['size']} px, T = {payload['steps']} steps, seed {payload['seed']}; "
            f"{payload['n_queries']} standard roxford5k-mini queries protected whole, saved as JPEG q95 and decoded; "
            "mAP (%) over those queries, quality against the original photo (L-infinity and mean absolute change "
            "in grey levels); seconds of the attack alone per photo."]
    if "tables" in parts:
        rows = [["original"] + [pct(orig[k]) for k in MAP_KEYS] + [""] * 7,
                ["JPEG q95 re-save only"] + [""] * 4 + quality(payload["jpeg_resave"]) + [""] * 3]
        rows += [[label] + [pct(runs[k][m]) for m in MAP_KEYS] + quality(runs[k])
                 + [round(runs[k]["seconds_per_photo"], 1), round(runs[k]["steps_per_photo"], 1),
                    round(runs[k]["seconds_per_step"], 3)] for label, k in parts["tables"]]
        text += ["## Table 4.1 equivalent", markdown_table(
            ["setting", "BB Medium", "BB Hard", "WI Medium", "WI Hard", "SSIM", "PSNR", "L-inf", "mean abs",
             "s/photo", "steps", "s/step"], rows)]
        rows = [["CV-PIRE published (JPEG q75)", len(list(CVPIRE_PUBLISHED.glob("*.jpg"))),
                 *quality(payload["published_cvpire"])]]
        rows += [[label, runs[k]["n_cvpire_photos"], *quality(runs[k]["cvpire_photos"])]
                 for label, k in parts["tables"] if runs[k]["cvpire_photos"]]
        text += ["## Quality on the photos with published CV-PIRE outputs", markdown_table(
            ["output", "photos", "SSIM", "PSNR", "L-inf", "mean abs"], rows)]
    if "m" in parts:
        rows = [[m, v, pct(runs[k]["bb_medium"]), pct(runs[k]["wi_medium"]), pct(runs[k]["wi_hard"]),
                 round(runs[k]["ssim"], 4)] for m, pts in parts["m"].items() for v, k in pts]
        text += ["## Table 4.2 equivalent: threshold multiplier m", markdown_table(
            ["method", "m", "BB Medium", "WI Medium", "WI Hard", "SSIM"], rows)]
    if "iterations" in parts:
        ks = [k for k, _ in runs[parts["iterations"][0][1]]["iterations"]]
        rows = [[label] + [pct(v) for _, v in runs[k]["iterations"]] for label, k in parts["iterations"]]
        text += ["## WI Medium mAP after k steps (one run per method, early stopping off)",
                 markdown_table(["setting"] + [f"k={k}" for k in ks], rows)]
    if "curves" in parts:
        rows = [["original", "-", pct(orig["wi_medium"]), ""]]
        rows += [[m, b, pct(runs[k]["wi_medium"]), round(runs[k]["ssim"], 4)]
                 for m, pts in parts["curves"].items() for b, k in pts]
        text += [f"## Quality-effect curves (T = {payload['steps']}; budget: eps in grey levels, m for CV-/SD-PIRE, "
                 f"SSIM weight for ssim-pire at {STRENGTHS[WEIGHT_STRENGTH].ssim_eps_levels:g} levels)",
                 markdown_table(["method", "budget", "WI Medium", "SSIM"], rows)]
    write_results(name, payload, "\n\n".join(text))
    plot(payload, name)


def plot(payload: dict, name: str) -> None:
    """The iterations, m and quality-effect plots of the parts measured so far."""
    runs, parts, orig = payload["runs"], payload["parts"], payload["original"]
    title = f"roxford5k-mini, {payload['n_queries']} queries, {payload['size']} px, JPEG q95"
    if "iterations" in parts:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, k in parts["iterations"]:
            pts = np.array(runs[k]["iterations"], dtype=float)
            ax.plot(pts[:, 0], 100 * pts[:, 1], marker="o", label=label)
        ax.axhline(100 * orig["wi_medium"], color="grey", ls="--", label="original")
        ax.set(xlabel="iterations", ylabel="mAP WI Medium (%)", title=title)
        ax.legend(fontsize=8)
        fig.savefig(RESULTS / f"{name}_iterations.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
    if "m" in parts:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        for m, pts in parts["m"].items():
            v = [x for x, _ in pts]
            for key, style in (("wi_medium", "-o"), ("bb_medium", "--s")):
                left.plot(v, [100 * runs[k][key] for _, k in pts], style, label=f"{m} {key[:2].upper()} Medium")
            right.plot(v, [runs[k]["ssim"] for _, k in pts], "-o", label=m)
        left.set(xlabel="threshold multiplier m", ylabel="mAP (%)", title=title)
        right.set(xlabel="threshold multiplier m", ylabel="mean SSIM")
        left.legend(fontsize=8)
        right.legend(fontsize=8)
        fig.savefig(RESULTS / f"{name}_m.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
    if "curves" in parts:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m, pts in parts["curves"].items():
            pts = sorted(pts, key=lambda p: runs[p[1]]["ssim"])  # a curve along SSIM, whatever the budget order
            ssim, wi = [runs[k]["ssim"] for _, k in pts], [100 * runs[k]["wi_medium"] for _, k in pts]
            ax.plot(ssim, wi, "-o", label=m)
            for (b, _), x, y in zip(pts, ssim, wi):
                ax.annotate(f"{b:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(100 * orig["wi_medium"], color="grey", ls="--", label="original")
        if "jpeg_resave" in payload:
            ax.axvline(payload["jpeg_resave"]["ssim"], color="grey", ls=":", label="JPEG q95 re-save alone")
        ax.set(xlabel="mean SSIM", ylabel="mAP WI Medium (%)", title=title)
        ax.legend(fontsize=8)
        fig.savefig(RESULTS / f"{name}_quality_effect.png", dpi=120, bbox_inches="tight")
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="working size, long side in pixels (default 512)")
    parser.add_argument("--limit", type=int, help="protect only the first N standard queries")
    parser.add_argument("--steps", type=int, default=THESIS_STEPS,
                        help=f"T of the thesis settings (default {THESIS_STEPS})")
    parser.add_argument("--every", type=int, default=10,
                        help="iterations plot: mAP every this many steps, at most T (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--curve-budgets", nargs="+", metavar="METHOD=B1,B2",
                        help="curves: only these methods at these budgets (default: every method, CURVE_BUDGETS)")
    parser.add_argument("--name", default="perceptual_methods", help="results name (bench/results/NAME.*)")
    parser.add_argument("--table-only", action="store_true", help="re-render tables and plots from the JSON")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if args.curve_budgets:
        try:
            args.curve_budgets = {m: [float(b) for b in bs.split(",")] for m, bs in
                                  (item.split("=") for item in args.curve_budgets)}
        except ValueError:
            parser.error(f"--curve-budgets: expected METHOD=B1,B2,..., got {' '.join(args.curve_budgets)}")
    if not set(parts) <= set(PARTS):
        parser.error(f"--parts: choose from {', '.join(PARTS)}")
    path = RESULTS / f"{args.name}.json"
    settings = {"size": args.size, "steps": args.steps, "every": args.every, "seed": args.seed, "limit": args.limit}
    payload = json.loads(path.read_text()) if path.is_file() else {**settings, "runs": {}, "parts": {}}
    if args.table_only:
        return render(payload, args.name)
    payload.pop("machine", None)  # this run's machine is written instead
    if any(payload[k] != v for k, v in settings.items()):
        parser.error(f"{path} holds a run with other options ({ {k: payload[k] for k in settings} }); use --name")
    bench = Bench(args, payload)
    for name in parts:
        bench.part(name)
        render(payload, args.name)


if __name__ == "__main__":
    main()
