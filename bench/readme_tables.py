"""Render the README's benchmark tables from the committed JSON results (run after the benchmarks)."""
import json
from pathlib import Path

from common import RESULTS, markdown_table

README = Path(__file__).parents[1] / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


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
    return (f"Machine: {data['machine']}. mAP in %; random-ranking mAP (roxford5k-mini Medium): {100 * rnd:.2f}. "
            "Throughput: images/s of a single thread while other jobs ran (indicative only).\n\n"
            + markdown_table(["model", "size", "BB Medium", "BB Hard", "WI Medium", "WI Hard", "ext WI Medium",
                              "ext WI Hard", "ukbench mAP", "images/s"], rows))


def result_markdown(name: str) -> str:
    """A result's markdown as written by the benchmark, machine line first."""
    return (RESULTS / f"{name}.md").read_text().strip()


SECTIONS = [  # (result name, heading: the command that produced it, note)
    ("protect_pire_512_ssim_pire", "`ssim-pire`, the method of `low` and `high` (`python bench/protect_pire.py --size 512 "
     "--settings ssim-pire:low --name protect_pire_512_ssim_pire`)",
     "Same photos and protocol as the `pire` table below. One thread while two other benchmarks shared the two "
     "cores, so its seconds per photo are about twice what it costs alone."),
    ("protect_pire_1024_limit10_ssim_pire", "`ssim-pire` at 1024 px, 10 + 10 queries (`python bench/protect_pire.py "
     "--size 1024 --limit 10 --settings ssim-pire:low+jpeg ssim-pire:medium --name protect_pire_1024_limit10_ssim_pire`)",
     "What `advquery protect --method ssim-pire` does at its default size for a JPEG q95 output (`low` runs "
     "ssim-pire anyway, `medium` runs pire unless told). One thread beside other benchmarks."),
    ("robustness_512_ssim_pire", "Robustness of the `ssim-pire` presets (`python bench/robustness.py --size 512 "
     "--limit 10 --method ssim-pire --name robustness_512_ssim_pire --transfer-limit 0`)",
     "`medium` and `high` reuse the protected files of their tuning runs (same attack, same seed); seconds per "
     "photo on one thread shared with other benchmarks."),
    ("protect_pire_512", "PIRE protection, the `pire` presets (`python bench/protect_pire.py --size 512 --settings low medium paper-T30`)",
     "Each preset's one optimisation is saved in all three modes. Seconds per photo: `low` and `medium` on one "
     "thread while another benchmark used the second core; `paper-T30` on two threads (its files were reused)."),
    ("protect_pire_512_limit5", "Every preset and the paper's T = 200 and 500, first 5 + 5 queries "
     "(`python bench/protect_pire.py --size 512 --limit 5 --settings high paper-T200,500 low medium paper-T30`)",
     "T = 200 is a snapshot of the T = 500 run (same optimisation), its seconds 200/500 of that run's. One thread "
     "beside another benchmark; `low`, `medium` and `paper-T30` are the same files as in the table above."),
    ("protect_pire_1024_limit10", "PIRE protection at 1024 px, 10 + 10 queries "
     "(`python bench/protect_pire.py --size 1024 --limit 10 --settings low low+jpeg low+coarse2 low+jpeg+coarse2 "
     "medium+coarse1`)",
     "`+jpeg`: optimised through the JPEG q95 it is saved as (what `protect` does for JPEG output with `low`); "
     "`+coarseN`: the perturbation on a grid N times coarser than the working resolution (`coarseness=N`); "
     "`medium+coarse1` is the `medium` preset before it moved to a 512 px grid (today's `medium` at 1024 px is "
     "`medium+coarse2`, next table). These rows were written before presets were saved in all three modes (a "
     "rerun adds `refined` and `x10` rows). Seconds per photo: `low` and `low+jpeg` on one thread shared with another benchmark, the others on "
     "two threads."),
    ("protect_pire_1024_limit10_coarse", "Today's `medium` at 1024 px: its 512 px grid, 10 + 10 queries "
     "(`python bench/protect_pire.py --size 1024 --limit 10 --settings medium+coarse2 "
     "--name protect_pire_1024_limit10_coarse`)",
     "Compare with the `medium+coarse1` rows of the table above (same photos). One thread beside another "
     "benchmark."),
    ("protect_pire_1024_limit10_steps60", "`low` through the JPEG with 60 steps at 1024 px, 10 + 10 queries "
     "(`python bench/protect_pire.py --size 1024 --limit 10 --settings low+jpeg+steps60 "
     "--name protect_pire_1024_limit10_steps60`)",
     "What `advquery protect --strength low --steps 60` does for a JPEG q95 output at 1024 px. Two threads."),
    ("robustness_512", "Robustness of the `pire` presets (`python bench/robustness.py --size 512 --limit 10 "
     "--transfer-limit 10 --presets low medium high`)",
     "Seconds per photo come from runs on one or two threads, partly shared with other benchmarks: indicative "
     "only (the machine line names the threads of one of those runs)."),
    ("robustness_1024", "Robustness of today's `medium` at 1024 px (`python bench/robustness.py --size 1024 --limit 10 "
     "--presets medium --parts edits`)",
     "At 1024 px a 50 % downscale halves what the tracker sees (at 512 px `resize:0.25` does)."),
    ("other_systems", "Other CBIR systems: PIRE paper Tables 6-8 (`python bench/other_systems.py`)", ""),
    ("perceptual_methods_limit6", "Perceptual methods, first 6 queries, T = 40 (`python bench/perceptual_methods.py "
     "--limit 6 --steps 40 --name perceptual_methods_limit6`)",
     "A small run of the thesis comparison: the full one (58 queries, T = 100, all parts) needs about 16 hours "
     "on this CPU. The thesis-setting rows run T = 40 steps without early stopping, the `protect` rows exactly "
     "what `advquery protect` runs for a JPEG q95 output. Plots: `bench/results/perceptual_methods_limit6_*.png`."),
    ("perceptual_methods_limit20_operating_point", "Perceptual methods at the operating point (SSIM about 0.99), "
     "first 20 queries (`python bench/perceptual_methods.py --limit 20 --steps 40 --parts curves --curve-budgets "
     "ssim-pire=60,150,300,600,1200 pire=1,2 cv-pire=20,10 sd-pire=20,10 masked-pire=0.5 "
     "--name perceptual_methods_limit20_operating_point`)",
     "The first 6 photos' files are those of the 6-query run (same settings)."),
    ("perceptual_map_speed", "Colour-variance map speed (`python bench/perceptual_map_speed.py`)", ""),
]


def main() -> None:
    text = README.read_text()
    body = (f"### Baseline retrieval (`python bench/baseline_retrieval.py`, full table in "
            f"`bench/results/baseline_retrieval.md`)\n\n{baseline()}\n")
    for name, heading, note in SECTIONS:
        if (RESULTS / f"{name}.json").is_file():
            body += f"\n### {heading}\n\n" + (f"{note}\n\n" if note else "") + f"{result_markdown(name)}\n"
    head, rest = text.split(START)
    README.write_text(f"{head}{START}\n{body}{END}{rest.split(END)[1]}")


if __name__ == "__main__":
    main()
