"""The web page (Gradio): drop photos, choose a strength, watch each photo's progress, compare and download.

Everything the page shows comes from :meth:`JobQueue.snapshot`, the data ``GET /api/jobs/{id}``
returns, and every download link is an API route, so the page and the API cannot disagree. The
page polls its job once a second while it runs.
"""
from html import escape
from pathlib import Path

import gradio as gr

from ..models import DEFAULT_MODEL, relative_compute
from ..protection import DEFAULT_STRENGTH, STRENGTHS, Strength, attacked_models
from ..trackers import verdict_summary
from .jobs import DIFFERENCE_GAINS, JobQueue, NoPhotoError

POLL_SECONDS = 1.0
# System fonts only: the page must not fetch a font (or anything else) from the internet.
THEME = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
CSS = """
#job-status table { border-collapse: collapse; width: 100%; }
#job-status td { padding: 4px 8px; border-bottom: 1px solid var(--border-color-primary); }
#job-status progress { width: 10em; }
#job-status .failed td { color: var(--error-text-color); }
.report th { text-align: left; padding-right: 1em; font-weight: normal; }
"""
VERDICT_WORDS = {"blocked": "blocked: it no longer matches this photo to the original",
                 "weakened": "weakened: it still matches them, but less surely",
                 "still found": "still found: it matches this photo to the original"}


def model_passes(preset: Strength, steps: int | None = None) -> int:
    """The most passes of the photo through a search model one protection with ``preset`` makes, what its time
    grows with: per step (``steps`` overrides the preset's, as ``advquery ui --steps`` does) each tracker view and
    the whole photo, or without views the saved file alone."""
    return (preset.steps if steps is None else steps) * ((preset.views.per_step if preset.views is not None else 0) + 1)


def weighted_passes(preset: Strength, steps: int | None = None) -> float:
    """:func:`model_passes` with the passes of smaller views weighed by their pixels (``TrackerViews.pass_cost``;
    the whole photo and the preset's own views count one each)."""
    per_step = preset.views.pass_cost if preset.views is not None else 0
    return (preset.steps if steps is None else steps) * (per_step + 1)


def relative_time(preset: Strength, steps: int | None = None, model: str = DEFAULT_MODEL) -> float:
    """What one protection's time grows with: its passes weighed by their pixels (:func:`weighted_passes`) and by
    the compute of the model each goes through (spread evenly over ``model``, the page's, and the preset's others;
    Lite0's = 1)."""
    members = attacked_models(model, preset.models)
    return weighted_passes(preset, steps) * sum(map(relative_compute, members)) / len(members)


def strength_line(name: str, preset: Strength, presets: dict[str, Strength] = STRENGTHS,
                  steps: int | None = None, model: str = DEFAULT_MODEL) -> str:
    """One line in plain words on what a preset protects against and what it costs (how much it may change the
    photo and its time, as model passes and their compute beside those of the quickest of ``presets``; ``steps``:
    the override of every preset's steps the page's protections run with; ``model``: the page's), read from its
    configuration."""
    budget, budgets = preset.budget_levels(), [p.budget_levels() for p in presets.values()]
    if preset.views is None:
        protects = "protects the photo posted as it is"
    else:  # the edits its views draw; without re-compressed views, a re-compressed or shrunk photo gives much back
        edits = "crops or flips" if preset.views.jpeg is None else "re-compresses, resizes, crops or flips"
        protects = f"protects the photo as posted and also when a site {edits} it"
    protects += (", and against other search models than the one it was computed with" if preset.models
                 else ", against the search model it was computed with")
    if preset.views is None:
        protects += "; a site that re-compresses, resizes or crops the photo can undo it"
    elif preset.views.jpeg is None:
        protects += "; a site that re-compresses or shrinks the photo can undo much of it"
    look = ("near-invisible; " if budget == min(budgets) else
            "the strongest, and a close look can see the change in smooth areas; " if budget == max(budgets) else "")
    changes = f"Changes a pixel by at most {budget:g} of 255 brightness levels"
    if preset.spare_flat is not None:
        changes += ", flat areas (clear sky, plain walls) not at all"
    passes, cost = model_passes(preset, steps), relative_time(preset, steps, model)
    quickest = min(presets, key=lambda n: relative_time(presets[n], steps, model))
    fewest, least = model_passes(presets[quickest], steps), relative_time(presets[quickest], steps, model)
    if cost == least:
        time = f"the quickest (up to {passes} passes of the photo through a search model)"
    else:
        time = (f"about {round(cost / least, 1):g} times {quickest}'s (up to {passes} passes of the photo "
                f"through a search model, against {fewest})")
    default = " (the default)" if name == DEFAULT_STRENGTH else ""
    return f"**{name}**{default}: {look}{protects}. {changes}. Time: {time}."


JPEG_NOTE = ("A JPEG photo stays JPEG (quality 95), which adds the small changes any JPEG re-save makes; other "
             "formats become PNG.")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _photo_state(photo: dict) -> str:
    state, eta = photo["state"], photo["eta_seconds"]
    if state == "waiting":
        return "waiting" + (f", done in about {_duration(eta)}" if eta is not None else "")
    if state == "running":
        return "protecting" + (f", about {_duration(eta)} left" if eta is not None else ", starting")
    if state == "checking":
        return "measuring the result"
    return f"protected in {_duration(photo['report']['seconds'])}"


def status_html(job: dict) -> str:
    """The job's lines: where it is in the queue, one line per photo (progress, ETA, download, or the
    reason it failed) and the link to download all finished photos."""
    lines = []
    if job["state"] == "queued":
        ahead = job["jobs_ahead"]
        lines.append(f'<p class="queue">Waiting for {ahead} job{"s" * (ahead != 1)} ahead of yours: this '
                     "computer protects one job at a time.</p>")
    rows = []
    for photo in job["photos"]:
        name = escape(photo["name"])
        if photo["state"] == "failed":
            rows.append(f'<tr class="photo failed"><td colspan="4">{escape(photo["error"])}</td></tr>')
            continue
        link = (f'<a class="download" href="{photo["download"]}" download="{escape(photo["output_name"])}">'
                f'download {escape(photo["output_name"])}</a>' if photo["download"] else "")
        rows.append(f'<tr class="photo {photo["state"]}"><td>{name}</td>'
                    f'<td><progress value="{photo["progress"]:.3f}" max="1"></progress></td>'
                    f'<td class="state">{escape(_photo_state(photo))}</td><td>{link}</td></tr>')
    lines.append(f"<table>{''.join(rows)}</table>")
    if job["zip"]:
        finished = "all photos" if job["state"] == "done" else f"the {job['done']} protected so far"
        lines.append(f'<p><a id="download-all" href="{job["zip"]}" download="protected-photos.zip">'
                     f"Download {finished} (zip, original file names)</a></p>")
    return "".join(lines)


def check_html(checks: list[dict]) -> str:
    """"Does the protection work?": the count of each verdict (``advquery verify``'s summary line), then one
    line per tracker in plain words."""
    lines = []
    for c in checks:
        tracker, similarity = escape(c["tracker"]), c["similarity"]
        near = "" if c["firm"] else "; near a threshold, so this could go either way"
        lines.append(f'<li class="{escape(c["verdict"])}">{tracker}: {VERDICT_WORDS[c["verdict"]]} '
                     f"(similarity {similarity:.3f}{near})</li>")
    summary = (f'<p class="check-summary">{len(checks)} check{"s" * (len(checks) != 1)} (an image-search system '
               "given the photo as posted or after an edit a site might make): "
               f"{verdict_summary((c['verdict'] for c in checks), near=sum(not c['firm'] for c in checks))}.</p>")
    return f"<h3>Does the protection work?</h3>{summary}<ul class=\"checks\">{''.join(lines)}</ul>"


def report_html(photo: dict) -> str:
    """A finished photo's image-quality report and its protection check."""
    r = photo["report"]
    psnr = "infinite (unchanged)" if r["psnr"] is None else f"{r['psnr']:.1f} dB"
    rows = [("Structural similarity (SSIM)", f"{r['ssim']:.4f} (1: identical)"),
            ("Peak signal-to-noise ratio (PSNR)", f"{psnr} (higher: closer to the original)"),
            ("Largest change", f"{r['largest_change']:.0f} grey levels of 255 "
                               f"(on average {r['mean_change']:.2f})"),
            ("Descriptor similarity", f"{r['similarity']:.3f} (the retrieval model's view; 1: the same photo)")]
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return (f'<h3>{escape(photo["output_name"])}</h3><table class="report">{table}</table>'
            + check_html(photo["checks"]))


def build_page(jobs: JobQueue) -> gr.Blocks:
    """The page, served from ``jobs``."""
    with gr.Blocks(title="advquery: protect photos", analytics_enabled=False) as page:
        gr.Markdown("# Protect photos from image search\nThe protected copies look unchanged, but "
                    "retrieval systems can no longer match them to the original or to other photos of the "
                    "same place. Your photos stay on this computer: nothing is sent anywhere.")
        with gr.Row():
            files = gr.File(file_count="multiple", label="Photos", elem_id="photos")
            with gr.Column():
                strength = gr.Radio(list(STRENGTHS), value=DEFAULT_STRENGTH, label="Strength", elem_id="strength")
                lines = (strength_line(n, s, steps=jobs.steps, model=jobs.model.name) for n, s in STRENGTHS.items())
                gr.Markdown("\n".join(f"- {line}" for line in lines) + f"\n\n{JPEG_NOTE}")
                keep = gr.Checkbox(label="Keep metadata (camera, date); the GPS location is always removed, "
                                         "the colour profile always kept", elem_id="keep-metadata")
                start = gr.Button("Protect", variant="primary", elem_id="start")
        status = gr.HTML(elem_id="job-status")
        job_id = gr.State(None)
        timer = gr.Timer(POLL_SECONDS, active=False)
        with gr.Column(visible=False) as results:
            choice = gr.Radio([], label="Protected photo", elem_id="photo-choice")
            slider = gr.ImageSlider(label="Before / after: drag the handle", type="filepath", interactive=False,
                                    max_height=2000, elem_id="slider")
            with gr.Row():
                with gr.Column():
                    gain = gr.Radio([(f"x{g}", g) for g in DIFFERENCE_GAINS], value=DIFFERENCE_GAINS[0],
                                    label="The change, amplified (grey: unchanged)", elem_id="gain")
                    difference = gr.Image(type="filepath", interactive=False, label="Amplified difference",
                                          elem_id="difference")
                report = gr.HTML(elem_id="report")

        def submit(paths, strength_name, keep_metadata):
            cleared = gr.Column(visible=False), gr.Radio(choices=[], value=None)
            if not paths:
                return None, "<p>Add photos first.</p>", gr.Timer(active=False), *cleared
            handles = [open(p, "rb") for p in paths]
            try:
                job = jobs.submit([(Path(p).name, h) for p, h in zip(paths, handles)], strength_name, keep_metadata)
            except NoPhotoError as exc:
                rows = "".join(f'<tr class="photo failed"><td>{escape(line)}</td></tr>' for line in exc.lines)
                return None, f"<table>{rows}</table>", gr.Timer(active=False), *cleared
            finally:
                for h in handles:
                    h.close()
            return job.id, status_html(jobs.snapshot(job)), gr.Timer(active=True), *cleared

        def refresh(current_job, selected):
            job = jobs.get(current_job) if current_job else None
            if job is None:
                return gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False)
            state = jobs.snapshot(job)
            finished = [(p["output_name"], p["index"]) for p in state["photos"] if p["state"] == "done"]
            if not finished:
                return status_html(state), gr.skip(), gr.skip(), gr.Timer(active=state["state"] != "done")
            keep_selected = selected in [index for _, index in finished]
            return (status_html(state), gr.Radio(choices=finished, value=selected if keep_selected else finished[0][1]),
                    gr.Column(visible=True), gr.Timer(active=state["state"] != "done"))

        def show(current_job, index, amplification):
            job = jobs.get(current_job) if current_job else None
            task = job.photo(index) if job is not None and index is not None else None
            if task is None or task.state != "done":
                return gr.skip(), gr.skip(), gr.skip()
            photo = jobs.snapshot(job)["photos"][index]
            return (str(task.before), str(task.output)), str(task.differences[amplification]), report_html(photo)

        start.click(submit, [files, strength, keep], [job_id, status, timer, results, choice])
        timer.tick(refresh, [job_id, choice], [status, choice, results, timer])
        choice.change(show, [job_id, choice, gain], [slider, difference, report])
        gain.change(show, [job_id, choice, gain], [slider, difference, report])
    return page
