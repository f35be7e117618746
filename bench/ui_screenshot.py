"""The README's screenshot of ``advquery ui`` (docs/ui.png), made by the browser test's code path
(tests/ui_browser.py): two roxford5k-mini photos and a broken file dropped on the page and protected
at the preset's own settings, the finished page captured whole and shrunk to a small PNG.

Run: ``python bench/ui_screenshot.py [--strength low] [--output docs/ui.png]`` (chromium and the ui extra
installed; a minute or two on CPU).
"""
import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import ui_browser  # noqa: E402
from common import DATA_ROOT  # noqa: E402

PHOTOS = ("new_000404", "radcliffe_camera_000296")  # landmarks, no people


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strength", default="low")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "ui.png")
    parser.add_argument("--width", type=int, default=900, help="width of the saved PNG in pixels")
    args = parser.parse_args()
    missing = ui_browser.chromium_missing()
    if missing:
        sys.exit(f"ui_screenshot: {missing}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broken = work / "IMG_0042.jpg"
        broken.write_bytes(b"\xff\xd8\xff\xe0 cut off after the first bytes")
        photos = [DATA_ROOT / "roxford5k-mini" / "jpg" / f"{name}.jpg" for name in PHOTOS] + [broken]
        with ui_browser.ui_server(work / "server") as server, ui_browser.chromium(work) as driver:
            ui_browser.protect_in_page(driver, server.url, photos, args.strength, timeout=1200)
            ui_browser.slider_images(driver)
            ui_browser.shown_image(driver, "#difference img")
            shot = Image.open(ui_browser.full_page_screenshot(driver, work / "page.png")).convert("RGB")
    height = round(shot.height * args.width / shot.width)
    small = shot.resize((args.width, height), Image.Resampling.LANCZOS).quantize(colors=256)  # dithered palette: small
    args.output.parent.mkdir(parents=True, exist_ok=True)
    small.save(args.output, optimize=True)
    print(f"wrote {args.output} ({args.width} x {height} px, {args.output.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
