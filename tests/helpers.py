"""Small builders shared by several test modules."""
import torch
from PIL import ExifTags, Image


def exif_with_gps(orientation: int) -> Image.Exif:
    """EXIF with an orientation, a camera make and a GPS block (what protect must strip)."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "TestCam"
    exif[ExifTags.IFD.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (1.0, 2.0, 3.0)}
    return exif


def levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in grey levels."""
    return (a - b).abs() * 255


def on_grid(x: torch.Tensor) -> bool:
    """Whether every value is on the 8-bit grid k / 255."""
    return bool(((x * 255) - (x * 255).round()).abs().max() <= 1e-4)
