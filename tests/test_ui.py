"""``advquery ui``: the page in a real browser (Debian's chromium, offline), the JSON API, upload limits and
privacy, on a server started as a subprocess with a tiny working size and two steps."""
import io
import stat
import time
import zipfile
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import numpy as np
import pytest
from PIL import ExifTags, Image

import ui_browser
from advquery.attacks.views import TrackerViews
from advquery.io import read_photo, write_photo_atomic
from advquery.protection import DEFAULT_STRENGTH, STRENGTHS
from advquery.trackers import SUITES, VERDICTS, TrackerCheck, verdict_summary
from advquery.ui.jobs import Job, PhotoTask, photo_entry
from advquery.ui.page import (JPEG_NOTE, build_page, check_html, model_passes, status_html, strength_line,
                              weighted_passes)
from advquery.ui.server import host_warning
from helpers import exif_with_gps

MAX_PIXELS = 1_000_000
SERVER_OPTIONS = ("--size", "64", "--steps", "2", "--max-upload-mb", "1", "--max-pixels", str(MAX_PIXELS))
PHOTOS = ("ukbench00000", "ukbench00004")


def bound(strength: str) -> float:
    """The largest change, in grey levels, a preset allows on a lossless output."""
    preset = STRENGTHS[strength]
    return preset.budget_levels()


@pytest.fixture(scope="module")
def server(data_root, tmp_path_factory):
    with ui_browser.ui_server(tmp_path_factory.mktemp("ui-server"), *SERVER_OPTIONS) as running:
        yield running


@pytest.fixture(scope="module")
def uploads(ukbench_dir, tmp_path_factory) -> dict[str, Path]:
    """Two real photos as PNG (a lossless output keeps the preset's bound exactly) and a broken file."""
    folder = tmp_path_factory.mktemp("ui-uploads")
    files = {f"{n}.png": write_photo_atomic(folder / f"{n}.png", read_photo(ukbench_dir / f"{n}.jpg").rgb)
             for n in PHOTOS}
    (folder / "broken.jpg").write_text("this is not a photo\n")
    return files | {"broken.jpg": folder / "broken.jpg"}


def wait_until_done(client: httpx.Client, job_id: str, timeout: float = 180) -> dict:
    return ui_browser.wait_for(lambda: (job := client.get(f"/api/jobs/{job_id}").json())["state"] == "done" and job,
                               timeout, f"job {job_id}")


def check_zip(content: bytes, originals: dict[str, Path], strength: str) -> None:
    """The zip holds one file per original, under its name, each a photo changed within the preset's bound."""
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert sorted(archive.namelist()) == sorted(originals)
        for name, original in originals.items():
            protected = np.array(Image.open(io.BytesIO(archive.read(name))).convert("RGB"), dtype=int)
            change = np.abs(protected - read_photo(original).rgb.astype(int))
            assert 1 <= change.max() <= bound(strength), name


# ------------------------------------------------------------------------------ the page in a browser


def test_page_protects_photos_in_an_offline_browser(server, uploads, tmp_path):
    missing = ui_browser.chromium_missing()
    if missing:
        print(f"skipped: {missing}")
        pytest.skip(missing)
    from selenium.webdriver.common.by import By

    strength = "low"
    with ui_browser.chromium(tmp_path) as driver:
        ui_browser.protect_in_page(driver, server.url, list(uploads.values()), strength)
        done = driver.find_elements(By.CSS_SELECTOR, "#job-status tr.photo.done")
        failed = driver.find_elements(By.CSS_SELECTOR, "#job-status tr.photo.failed")
        assert sorted(row.text.split()[0] for row in done) == sorted(n for n in uploads if n.endswith(".png"))
        assert [row.text for row in failed] == ["broken.jpg: not an image file, or an unsupported image format"]

        previous = None  # the first photo is shown as soon as it is done
        for name, path in uploads.items():
            if name == "broken.jpg":
                continue
            height, width = read_photo(path).rgb.shape[:2]
            driver.find_element(By.XPATH, f"//*[@id='photo-choice']//label[normalize-space()='{name}']").click()
            before, after = ui_browser.slider_images(driver, previous)
            previous = before["src"]
            assert before["src"] != after["src"] and after["src"].endswith(name)
            assert (before["width"], before["height"]) == (after["width"], after["height"]) == (width, height)
            x10 = ui_browser.shown_image(driver, "#difference img")
            driver.find_element(By.XPATH, "//*[@id='gain']//label[normalize-space()='x30']").click()
            x30 = ui_browser.shown_image(driver, "#difference img", previous=x10["src"])
            driver.find_element(By.XPATH, "//*[@id='gain']//label[normalize-space()='x10']").click()
            ui_browser.shown_image(driver, "#difference img", previous=x30["src"])
            assert "x10" in x10["src"] and "x30" in x30["src"]
            assert (x10["width"], x10["height"]) == (x30["width"], x30["height"]) == (width, height)
            report = ui_browser.wait_for(lambda: name in (t := driver.find_element(By.ID, "report").text) and t, 30,
                                         "the report")
            for words in ("SSIM", "PSNR", "Largest change", "Descriptor similarity", "Does the protection work?"):
                assert words in report
            assert f"{len(SUITES['quick'])} checks (an image-search system" in report  # verify's summary line

        driver.find_element(By.ID, "download-all").click()
        zipped = ui_browser.wait_for(lambda: list((tmp_path / "downloads").glob("*.zip")), 60, "the zip download")
        check_zip(zipped[0].read_bytes(), {n: p for n, p in uploads.items() if n != "broken.jpg"}, strength)
        shot = ui_browser.full_page_screenshot(driver, tmp_path / "finished-page.png")
        assert Image.open(shot).size[0] > 0
        foreign = ui_browser.foreign_urls(ui_browser.requested_urls(driver), server.url)
    assert foreign == [], "the page fetched something from the internet"
    assert server.outside_contacts() == [], "the server contacted another computer"


# ------------------------------------------------------------------------------ the API


def test_api_protects_queues_and_serves_downloads(server, uploads, ukbench_dir, tmp_path):
    jpeg = tmp_path / "holiday.jpg"
    Image.open(ukbench_dir / "ukbench00020.jpg").save(jpeg, quality=95, exif=exif_with_gps(1))
    photos = {"holiday.jpg": jpeg, "ukbench00000.png": uploads["ukbench00000.png"]}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        files = [("files", (name, path.read_bytes())) for name, path in photos.items()]
        first = client.post("/api/protect", files=files, data={"strength": "medium", "keep_metadata": "true"})
        second = client.post("/api/protect", files=files[1:], data={"strength": "low"})
        assert first.status_code == second.status_code == 202
        assert second.json()["state"] == "queued" and second.json()["jobs_ahead"] == 1  # one job at a time
        job = wait_until_done(client, first.json()["id"])
        assert [p["state"] for p in job["photos"]] == ["done", "done"]
        for photo in job["photos"]:
            report = photo["report"]
            assert 0.5 < report["ssim"] < 1 and report["largest_change"] >= 1 and -1 <= report["similarity"] < 1
            assert [c["tracker"] for c in photo["checks"]] == [t.name for t in SUITES["quick"]]  # as verify --trackers
            assert all(-1 <= c["similarity"] <= 1 and c["verdict"] in VERDICTS for c in photo["checks"])
        download = client.get(job["photos"][0]["download"])
        assert download.status_code == 200
        assert 'filename="holiday.jpg"' in download.headers["content-disposition"]
        exif = Image.open(io.BytesIO(download.content)).getexif()
        assert exif[ExifTags.Base.Make] == "TestCam" and ExifTags.IFD.GPSInfo not in exif  # kept, but never GPS
        zipped = client.get(job["zip"])
        assert zipped.status_code == 200
        with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:
            assert sorted(archive.namelist()) == sorted(photos)
        check_zip(client.get(wait_until_done(client, second.json()["id"])["zip"]).content,
                  {"ukbench00000.png": uploads["ukbench00000.png"]}, "low")
        assert client.get("/api/jobs/no-such-job").status_code == 404
        assert client.get(f"/api/jobs/{job['id']}/photos/7").status_code == 404


def test_api_refuses_non_images_oversized_files_and_bombs(server, tmp_path):
    bomb = io.BytesIO()
    Image.new("RGB", (1250, 1000), "white").save(bomb, format="PNG")  # few bytes, more pixels than the limit
    with httpx.Client(base_url=server.url, timeout=60) as client:
        def post(name: str, content: bytes, **data) -> httpx.Response:
            return client.post("/api/protect", files=[("files", (name, content))], data=data)

        not_image = post("notes.jpg", b"plain text, not a photo")
        assert not_image.status_code == 422
        assert not_image.json()["photos"] == ["notes.jpg: not an image file, or an unsupported image format"]
        assert post("..", b"text").json()["photos"] == ["photo-1: not an image file, or an unsupported image format"]
        oversized = post("huge.jpg", b"\xff" * 1_500_000)
        assert oversized.status_code == 413
        assert oversized.json()["photos"] == ["huge.jpg: file too large (more than 1 MB, the limit of this page)"]
        bombed = post("bomb.png", bomb.getvalue())
        assert bombed.status_code == 422
        assert "decompression bomb" in bombed.json()["photos"][0] and str(MAX_PIXELS) in bombed.json()["photos"][0]
        unknown = post("x.png", bomb.getvalue(), strength="extreme")
        assert unknown.status_code == 422 and "unknown strength 'extreme'" in unknown.json()["error"]


def test_stopping_the_server_deletes_its_private_folder(server):
    assert stat.S_IMODE(server.folder.stat().st_mode) == 0o700
    assert server.stop() == 0
    assert not server.folder.exists()
    assert "uploads and results deleted" in server.log.read_text()
    assert server.outside_contacts() == []


# ------------------------------------------------------------------------------ what the page shows


def _job(states: list[str], state: str = "running") -> Job:
    return Job("j", Path("."), "medium", False, [PhotoTask(i, f"p{i}.jpg", None, s) for i, s in enumerate(states)],
               state)


def test_each_photo_gets_an_eta_from_the_running_photo_and_the_typical_time():
    job = _job(["running", "waiting", "failed", "waiting"])
    job.photos[0].started, job.photos[0].steps_done, job.photos[0].step_limit = 100.0, 2, 10
    eta, entries = 0.0, []
    for task in job.photos:
        entry, eta = photo_entry(job, task, 104.0, 30.0, eta)
        entries.append(entry)
    assert entries[0]["progress"] == pytest.approx(0.2) and entries[0]["eta_seconds"] == pytest.approx(16)
    assert [e["eta_seconds"] for e in entries[1:]] == [pytest.approx(46), None, pytest.approx(76)]
    queued = _job(["waiting"], state="queued")
    assert photo_entry(queued, queued.photos[0], 0.0, 30.0, 0.0)[0]["eta_seconds"] is None  # waits for jobs ahead


def test_status_says_the_job_is_queued_and_escapes_file_names():
    job = {"state": "queued", "jobs_ahead": 2, "zip": None, "done": 0,
           "photos": [{"name": "<b>a</b>.jpg", "state": "waiting", "eta_seconds": None, "progress": 0.0,
                       "download": None, "error": None},
                      {"name": "x.jpg", "state": "failed", "error": "x.jpg: empty file (0 bytes)"}]}
    html = status_html(job)
    assert "Waiting for 2 jobs ahead of yours" in html and "one job at a time" in html
    assert "&lt;b&gt;a&lt;/b&gt;.jpg" in html and "<b>a" not in html
    assert '<tr class="photo failed"><td colspan="4">x.jpg: empty file (0 bytes)</td></tr>' in html


def test_the_check_is_in_plain_words():
    rows = [TrackerCheck("Lite0", 0.31, "blocked", True), TrackerCheck("SIFT", 0.8, "still found", True),
            TrackerCheck("Lite1", 0.5, "weakened", True), TrackerCheck("Lite2", 0.2, "blocked", False)]
    html = check_html([asdict(r) for r in rows])
    assert "Lite0: blocked: it no longer matches this photo" in html
    assert "SIFT: still found: it matches this photo to the original" in html
    assert "Lite1: weakened: it still matches them, but less surely (similarity 0.500)" in html
    # a verdict within a threshold's calibration interval says so; a firm one does not
    assert "(similarity 0.200; near a threshold, so this could go either way)" in html
    assert html.count("near a threshold, so") == 1
    # advquery verify's summary line, counted by the same function, before the rows
    summary = "2 blocked, 1 weakened, 1 still found; 1 near a threshold"
    assert verdict_summary((r.verdict for r in rows), near=sum(not r.firm for r in rows)) == summary
    assert html.index(f"4 checks (an image-search system given the photo as posted or after an edit a site "
                      f"might make): {summary}.") < html.index("<li")
    assert "1 check (" in check_html([asdict(rows[0])]) and "near a threshold" not in check_html([asdict(rows[0])])
    with pytest.raises(ValueError, match="unknown verdicts"):
        verdict_summary(["blocked", "lost"])
    with pytest.raises(ValueError, match="near must count some of the 1 verdicts"):
        verdict_summary(["blocked"], near=2)


# a pass's compute against Lite0's: EfficientNet-Lite1 is 1.1 times as deep, Lite2 1.2 times as deep and 1.1 wide
COMPUTE = {"efficientnet-lite0-gem": 1.0, "efficientnet-lite1-gem": 1.1, "efficientnet-lite2-gem": 1.2 * 1.1 ** 2}


def _mean_compute(preset) -> float:
    """The mean compute of the models a preset's passes go through: the page's (Lite0) and the preset's others."""
    members = {"efficientnet-lite0-gem", *preset.models}
    return sum(COMPUTE[m] for m in members) / len(members)


JARGON = ("SSIM", "Lite", "grid", "price", "optimis", "view", "GeM", "epsilon", "L-inf", "grey level")


def test_strength_lines_state_each_presets_purpose_and_cost():
    # the cost in time: model passes (steps x (tracker views + the whole photo)), weighed by their pixels and by their
    # model's compute (depth x width^2 of the EfficientNet-Lite variant; spread over the models), beside low's, the
    # quickest
    passes = {n: model_passes(p) for n, p in STRENGTHS.items()}
    cost = {n: weighted_passes(p) * _mean_compute(p) for n, p in STRENGTHS.items()}
    assert min(cost, key=cost.get) == "low"
    strongest = max(STRENGTHS, key=lambda n: bound(n))
    for name, preset in STRENGTHS.items():
        line = strength_line(name, preset)
        assert preset.description not in line and not [w for w in JARGON if w in line], line
        assert line.startswith(f"**{name}**" + " (the default)" * (name == DEFAULT_STRENGTH) + ": ")
        assert f"at most {bound(name):g} of 255 brightness levels" in line
        assert ("flat areas (clear sky, plain walls) not at all" in line) == (preset.spare_flat is not None)
        if preset.views is None:  # what it is for
            assert "protects the photo posted as it is" in line
        elif preset.views.jpeg is None:
            assert "also when a site crops or flips it" in line and "re-compresses or shrinks the photo can undo" in line
        else:
            assert "also when a site re-compresses, resizes, crops or flips it" in line
        assert ("against other search models" in line) == bool(preset.models)
        assert ("a close look can see the change in smooth areas" in line) == (name == strongest)
        if name == "low":  # what it costs
            assert f"Time: the quickest (up to {passes['low']} passes of the photo" in line
        else:
            ratio = round(cost[name] / cost["low"], 1)
            assert f"Time: about {ratio:g} times low's (up to {passes[name]} passes" in line and ratio > 1
    # derived from the configuration, not written per preset: fewer steps, a smaller share of low's time
    halved = replace(STRENGTHS["high"], steps=STRENGTHS["high"].steps // 2)
    line = strength_line("high", halved, STRENGTHS | {"high": halved})
    assert f"about {round(cost['high'] / 2 / cost['low'], 1):g} times low's" in line
    assert "re-save" in JPEG_NOTE


def test_a_smaller_views_pass_counts_by_its_pixels():
    """weighted_passes: per step the whole photo and each own view count one, a view of an extra family at half the
    working sizes a quarter; model_passes counts every pass."""
    halves = TrackerViews(count=2, sizes=(500, 1000), extra=TrackerViews(count=1, sizes=(250, 500)))
    preset = replace(STRENGTHS["low"], steps=10, views=halves)
    assert weighted_passes(preset) == pytest.approx(10 * (1 + 2 + 0.25)) and model_passes(preset) == 10 * (1 + 3)
    assert weighted_passes(replace(preset, views=None), steps=4) == model_passes(replace(preset, views=None), 4) == 4


def test_strength_lines_weigh_passes_by_the_pages_model():
    """low's passes all go through the page's model; medium spreads its passes over that model and its others."""
    lite2 = "efficientnet-lite2-gem"
    low, medium = STRENGTHS["low"], STRENGTHS["medium"]
    members = {lite2, *medium.models}
    low_cost = weighted_passes(low) * COMPUTE[lite2]
    medium_cost = weighted_passes(medium) * sum(COMPUTE[m] for m in members) / len(members)
    line = strength_line("medium", medium, model=lite2)
    assert f"Time: about {round(medium_cost / low_cost, 1):g} times low's" in line
    with_lite0 = weighted_passes(medium) * _mean_compute(medium) / weighted_passes(low)
    assert round(medium_cost / low_cost, 1) < round(with_lite0, 1)  # nearer low's than with Lite0


def test_other_models_are_named_with_or_without_tracker_views():
    """The models clause follows the preset's models alone, not whether it also has tracker views."""
    for views in (None, STRENGTHS["low"].views, STRENGTHS["high"].views):
        preset = replace(STRENGTHS["low"], views=views, models=STRENGTHS["high"].models)
        assert preset.models and "against other search models" in strength_line("low", preset), views
        alone = strength_line("low", replace(preset, models=()))
        assert "against other search models" not in alone and "against the search model it was computed with" in alone
    line = strength_line("low", replace(STRENGTHS["low"], views=None, models=STRENGTHS["high"].models))
    assert line.count("can undo it") == 1 and not [w for w in JARGON if w in line], line


def test_strength_lines_follow_the_steps_override_of_the_page():
    """``advquery ui --steps N`` runs every preset N steps: the page's passes and ratios say so."""
    per_step = {n: model_passes(p, steps=1) for n, p in STRENGTHS.items()}  # passes per step
    cost = {n: weighted_passes(p, steps=1) * _mean_compute(p) for n, p in STRENGTHS.items()}
    ratio = cost["high"] / cost["low"]
    assert strength_line("low", STRENGTHS["low"], steps=2).endswith(
        f"Time: the quickest (up to {2 * per_step['low']} passes of the photo through a search model).")
    line = strength_line("high", STRENGTHS["high"], steps=2)
    assert (f"about {round(ratio, 1):g} times low's (up to {2 * per_step['high']} passes "
            f"of the photo through a search model, against {2 * per_step['low']})") in line
    page = build_page(SimpleNamespace(steps=2, model=SimpleNamespace(name="efficientnet-lite0-gem")))  # the page's lines are those of its queue's override
    shown = "\n".join(str(block.value) for block in page.blocks.values() if isinstance(block, gr.Markdown))
    assert f"- {line}" in shown and f"- {strength_line('high', STRENGTHS['high'])}" not in shown


def test_only_a_local_host_goes_without_warning():
    assert [host_warning(h) for h in ("127.0.0.1", "localhost", "::1")] == [None, None, None]
    assert "reachable from other computers" in host_warning("0.0.0.0")
