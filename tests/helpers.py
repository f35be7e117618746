"""Small builders shared by several test modules."""
from PIL import ExifTags, Image


def exif_with_gps(orientation: int) -> Image.Exif:
    """EXIF with an orientation, a camera make and a GPS block (what protect must strip)."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "TestCam"
    exif[ExifTags.IFD.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (1.0, 2.0, 3.0)}
    return exif
