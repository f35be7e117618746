"""Perceptual budget maps for CV-PIRE and SD-PIRE, and the colour differences they use.

Colours: ``rgb_to_lab`` takes sRGB images channels first, ``(*, 3, H, W)`` in [0, 1], and
returns CIELAB (D65 white, 2 degree observer) in the same layout: L in [0, 100], a and b
roughly in [-128, 128]; it equals ``skimage.color.rgb2lab``. The colour differences
``delta_e_ciede2000`` and ``delta_e_cie94`` take Lab colours in the LAST dimension,
``(..., 3)``, broadcast like any elementwise operation and return ``(...)``.

Maps: ``color_variance_map`` (thesis Algorithm 1, METHODS.md "CV-PIRE and SD-PIRE") and
``std_map`` take ``(N, 3, H, W)`` images in [0, 1] and return ``(N, 1, H, W)`` maps in
[0, 1], each image divided by its own maximum (a flat image gives all zeros). They are
computed without gradient, on the input's device, and returned in the input's dtype
(float16 / bfloat16 are computed in float32).
"""
from __future__ import annotations

import math

import torch

from .quality import FLAT_WINDOW, SSIM_K2, SSIM_SIGMA
from .transforms import gaussian_blur

__all__ = ["color_variance_map", "delta_e_cie94", "delta_e_ciede2000", "flat_gain", "monochrome", "rgb_to_lab",
           "share_channels", "ssim_cost_weights", "SSIMPrice", "std_map"]

METRICS = ("ciede2000", "cie94")
D65_WHITE = (0.95047, 1.0, 1.08883)  # CIE XYZ of D65, 2 degree observer (skimage's value)
# Linear sRGB -> XYZ, as skimage.color (sRGB specification values).
_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423),
                 (0.212671, 0.715160, 0.072169),
                 (0.019334, 0.119193, 0.950227))
BT709 = (0.2126, 0.7152, 0.0722)
_TWO_PI = 2 * math.pi
_BAND_ELEMENTS = 1 << 16  # pixel pairs per band in color_variance_map
MONOCHROME_LEVELS = 2  # largest difference between a pixel's channels, grey levels, of a black-and-white photo


def _work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half types and integers are widened)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _as_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected {name} as a torch.Tensor, got {type(x).__name__}")
    return x


# ----------------------------------------------------------------------------- colour space
# torch.where is slow on CPU (many times the cost of a multiplication), so the
# branches below are blended with 0/1 masks from sign(); each branch is evaluated on clamped
# inputs so the unused one is finite, and ``a * 1 + b * 0`` is exactly ``a``.


def _step(x: torch.Tensor) -> torch.Tensor:
    """1 where ``x > 0``, else 0 (same dtype as ``x``)."""
    return torch.sign(x).clamp_(min=0)


def _select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` where ``mask`` is 1, ``b`` where it is 0."""
    return a * mask + b * (1 - mask)


def rgb_to_lab(image: torch.Tensor) -> torch.Tensor:
    """sRGB to CIELAB (D65 white, 2 degree observer), as ``skimage.color.rgb2lab``.

    sRGB gamma expansion, linear RGB -> XYZ (sRGB matrix), division by the D65 white
    ``(0.95047, 1, 1.08883)``, CIELAB cube root with the linear segment below 0.008856.

    Args:
        image: ``(*, 3, H, W)`` float sRGB in [0, 1] (channels first, like the rest of the package).

    Returns:
        ``(*, 3, H, W)`` Lab (L in [0, 100]); float64 stays float64, other dtypes give float32.

    Raises:
        ValueError: not a tensor, or fewer than 3 dimensions, or dimension -3 is not 3.

    >>> red = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).view(3, 1, 1)
    >>> [round(v, 2) for v in rgb_to_lab(red).flatten().tolist()]
    [53.24, 80.09, 67.2]
    """
    image = _as_tensor(image, "image")
    if image.ndim < 3 or image.shape[-3] != 3:
        raise ValueError(f"expected image as (*, 3, H, W) sRGB in [0, 1], got shape {tuple(image.shape)}")
    x = image.to(_work_dtype(image))
    lin = _select(_step(x - 0.04045), ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4, x / 12.92)
    r, g, b = lin.unbind(-3)
    # XYZ / white; elementwise sums, not a matrix product, so equal colours give equal results
    t = torch.stack([(m0 * r + m1 * g + m2 * b) / wt for (m0, m1, m2), wt in zip(_XYZ_FROM_RGB, D65_WHITE)], -3)
    f = _select(_step(t - 0.008856), t.clamp_min(0.008856) ** (1 / 3), 7.787 * t + 16.0 / 116.0)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)


# ----------------------------------------------------------------------- colour differences


def _hue_2pi(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Hue angle in [0, 2 pi), radians: atan2(b, a), plus 2 pi where negative (as skimage and
    Sharma's own code: the same roundings, so hues exactly 180 degrees apart stay exactly pi
    apart, Sharma pairs 10 and 14). 0 for a = b = +0."""
    h = torch.atan2(b, a)
    return h.add_(_step(-h).mul_(_TWO_PI))


def _pow7(x: torch.Tensor) -> torch.Tensor:
    x2 = x * x
    return (x2 * x2).mul_(x2).mul_(x)  # a general x ** 7 costs more than these multiplications in torch


def _ciede2000_sq(L1, a1, b1, c1, L2, a2, b2, c2, kL=1.0, kC=1.0, kH=1.0):
    """Squared CIEDE2000 difference from Lab planes; eq. numbers of Sharma, Wu and Dalal (2005).

    ``c1``, ``c2``: the CIELAB chromas ``hypot(a, b)``. ``a`` and ``b`` must hold no negative
    zeros (add 0.0 first), so that ``h' = 0`` when ``a' = b = 0`` (eq. 7). The inputs are not
    modified; temporaries are updated in place (this runs 12 times per pixel in the CV map).
    The result can be slightly negative through rounding; callers clamp.
    """
    t7 = _pow7((c1 + c2).mul_(0.5 / 25))  # (C_bar / 25)^7
    scale = t7.div_(t7 + 1).sqrt_().mul_(-0.5).add_(1.5)  # 1 + G, eqs. 2-4
    a1p, a2p = a1 * scale, a2 * scale  # eq. 5
    c1p, c2p = torch.hypot(a1p, b1), torch.hypot(a2p, b2)  # eq. 6
    h1p, h2p = _hue_2pi(b1, a1p), _hue_2pi(b2, a2p)  # eq. 7

    cc = c1p * c2p
    chromatic = torch.sign(cc)  # 0 where C'1 C'2 = 0: no hue difference, mean hue = h'1 + h'2
    dh = h2p - h1p
    # eq. 10: k = +-1 moves dh into [-pi, pi]; round half to even leaves |dh| = pi alone, and the
    # factor (1 - 16 eps) counts |dh| within rounding of pi as pi: hues exactly 180 degrees apart
    # (Sharma pairs 10 and 14) can come out of atan2 an ulp further apart in float32.
    k = torch.round(dh * ((1 - 16 * torch.finfo(dh.dtype).eps) / _TWO_PI)).mul_(chromatic)
    dh.sub_(k * _TWO_PI)  # eq. 10 also sets dh' = 0 where C'1 C'2 = 0; the sqrt(C'1 C'2) below does that
    d_hue = cc.sqrt_().mul_(dh.mul_(0.5).sin_()).mul_(2)  # eq. 11, dH'

    # eq. 14: (h'1 + h'2) / 2, + pi when the hues are more than pi apart, - 2 pi if that passes 2 pi;
    # the sum itself when a chroma is 0 (then it is the other hue, in [0, 2 pi); no effect on dE00,
    # whose hue terms vanish with dH' there, but kept as the formula states)
    u = h1p.add_(h2p).mul_(chromatic.mul_(-0.5).add_(1)).add_(k.abs_().mul_(math.pi))
    hbar = u.sub_(torch.floor(u / _TWO_PI).mul_(_TWO_PI))

    t = torch.cos(hbar - math.radians(30)).mul_(-0.17).add_(1)  # eq. 15
    t.add_(torch.cos(2 * hbar), alpha=0.24)
    t.add_(hbar.mul(3).add_(math.radians(6)).cos_(), alpha=0.32)
    t.add_(hbar.mul(4).sub_(math.radians(63)).cos_(), alpha=-0.20)
    lbar50 = (L1 + L2).mul_(0.5).sub_(50).pow_(2)
    sl = lbar50.div((lbar50 + 20).sqrt_()).mul_(0.015).add_(1)  # eq. 18
    cbar_p = (c1p + c2p).mul_(0.5)  # eq. 13
    sc = cbar_p.mul(0.045).add_(1)  # eq. 19
    sh = cbar_p.mul(0.015).mul_(t).add_(1)  # eq. 20
    t7p = _pow7(cbar_p.mul_(1 / 25))
    rc = t7p.div_(t7p + 1).sqrt_().mul_(2)  # eq. 17
    # eq. 16, as 2 dtheta; exp(-z^2) is clamped at exp(-80) (< 2e-35): far below rounding, and
    # torch's exp is much slower on arguments that underflow float32
    z2 = hbar.mul_(180 / math.pi / 25).sub_(275 / 25).pow_(2)
    two_dtheta = z2.clamp_(max=80).neg_().exp_().mul_(2 * math.radians(30))
    rt = two_dtheta.sin_().mul_(rc).neg_()  # eq. 21

    l_term = (L2 - L1).div_(sl if kL == 1 else sl * kL)
    c_term = (c2p - c1p).div_(sc if kC == 1 else sc * kC)
    h_term = d_hue.div_(sh if kH == 1 else sh * kH)
    return rt.mul_(c_term).mul_(h_term).add_(l_term.pow_(2)).add_(c_term.pow_(2)).add_(h_term.pow_(2))  # eq. 22^2


def _cie94_parts(L1, a1, b1, c1, L2, a2, b2, c2):
    """The symmetric parts of CIE94: ``(dL^2, dC^2, dH^2)``; dH^2 without cancellation.

    ``dH^2 = 2 (C1 C2 - a1 a2 - b1 b2)``; where the hue angle is below 90 degrees (dot > 0)
    this is computed as ``2 cross^2 / (C1 C2 + dot)``, which keeps float32 accurate for the
    near colours of neighbouring pixels.
    """
    cc = c1 * c2
    dot = a1 * a2 + b1 * b2
    cross = a1 * b2 - a2 * b1
    near = _step(dot)
    stable = cross * cross / (cc + dot.abs()).clamp_min(1e-30)  # 0 where cc = dot = 0
    dh2 = 2 * _select(near, stable, cc - dot)
    dl, dc = L1 - L2, c1 - c2
    return dl * dl, dc * dc, dh2.clamp_min_(0)


def _cie94_sq_from_parts(dl2, dc2, dh2, c_ref, kL=1.0, kC=1.0, kH=1.0, k1=0.045, k2=0.015):
    """Squared CIE94 difference, ``c_ref`` the chroma of the reference colour."""
    sc = kC * (1 + k1 * c_ref)
    sh = kH * (1 + k2 * c_ref)
    return dl2 / (kL * kL) + dc2 / (sc * sc) + dh2 / (sh * sh)


def _planes(lab: torch.Tensor, dim: int):
    """``(L, a, b, C)`` from Lab along ``dim``; negative zeros of a and b made positive (see eq. 7)."""
    L, a, b = lab.unbind(dim)
    a, b = a + 0.0, b + 0.0
    return L, a, b, torch.hypot(a, b)


def _lab_pair(lab1, lab2):
    lab1, lab2 = _as_tensor(lab1, "lab1"), _as_tensor(lab2, "lab2")
    for name, x in (("lab1", lab1), ("lab2", lab2)):
        if x.ndim < 1 or x.shape[-1] != 3:
            raise ValueError(f"expected {name} as (..., 3) Lab colours (L, a, b last), got shape {tuple(x.shape)}")
    try:
        torch.broadcast_shapes(lab1.shape, lab2.shape)
    except RuntimeError:
        raise ValueError(f"lab1 {tuple(lab1.shape)} and lab2 {tuple(lab2.shape)} do not broadcast") from None
    dtype = _work_dtype(lab1, lab2)
    return _planes(lab1.to(dtype), -1), _planes(lab2.to(dtype), -1)


def delta_e_ciede2000(lab1: torch.Tensor, lab2: torch.Tensor, kL: float = 1, kC: float = 1,
                      kH: float = 1) -> torch.Tensor:
    """CIEDE2000 colour difference (Sharma, Wu and Dalal 2005), symmetric in its arguments.

    Includes the hue edge cases of the paper: no hue difference and the hue sum as mean
    when a chroma ``C'`` is 0, hue differences wrapped into [-180, 180] degrees, the mean
    hue taken across 0 when the hues are more than 180 degrees apart. Equals
    ``skimage.color.deltaE_ciede2000``.

    Args:
        lab1, lab2: ``(..., 3)`` CIELAB colours (L, a, b in the last dimension), broadcastable.
        kL, kC, kH: parametric weights of lightness, chroma and hue (1 for reference conditions).

    Returns:
        ``(...)`` differences (about 1: just noticeable); float64 if an input is, else float32.
        Differentiable, except where the two colours are equal (infinite slope of the square root).

    >>> d = delta_e_ciede2000(torch.tensor([50.0, 2.6772, -79.7751]), torch.tensor([50.0, 0.0, -82.7485]))
    >>> round(float(d), 4)
    2.0425
    """
    p1, p2 = _lab_pair(lab1, lab2)
    fn = _ciede2000_sq
    if torch.is_grad_enabled() and (lab1.requires_grad or lab2.requires_grad):
        fn = torch.func.functionalize(fn)  # its in-place temporaries, rewritten so autograd can follow
    return torch.sqrt(fn(*p1, *p2, kL=kL, kC=kC, kH=kH).clamp_min(0))


def delta_e_cie94(lab1: torch.Tensor, lab2: torch.Tensor, kL: float = 1, kC: float = 1, kH: float = 1,
                  k1: float = 0.045, k2: float = 0.015) -> torch.Tensor:
    """CIE94 colour difference, ``lab1`` the reference colour (not symmetric).

    ``sqrt((dL / kL)^2 + (dC / (kC S_C))^2 + (dH / (kH S_H))^2)`` with ``S_C = 1 + k1 C1`` and
    ``S_H = 1 + k2 C1``, C1 the chroma of ``lab1``. Defaults: graphic arts (kL 1, k1 0.045,
    k2 0.015). Same argument order and defaults as ``skimage.color.deltaE_ciede94``.

    Args:
        lab1: ``(..., 3)`` reference CIELAB colours (L, a, b last).
        lab2: ``(..., 3)`` compared colours, broadcastable with ``lab1``.

    Returns:
        ``(...)`` differences; float64 if an input is, else float32.

    >>> round(float(delta_e_cie94(torch.tensor([50.0, 0, 0]), torch.tensor([60.0, 0, 0]))), 4)
    10.0
    """
    p1, p2 = _lab_pair(lab1, lab2)
    parts = _cie94_parts(*p1, *p2)
    return torch.sqrt(_cie94_sq_from_parts(*parts, c_ref=p1[3], kL=kL, kC=kC, kH=kH, k1=k1, k2=k2))


# ------------------------------------------------------------------------------------- maps


def check_map_parameters(n: int, sigma: float = 1.0, metric: str = "ciede2000") -> None:
    """Raise ValueError unless n is an odd integer >= 3, sigma a positive number and metric one of METRICS."""
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 3 and n % 2 == 1):
        raise ValueError(f"n (window side) must be an odd integer >= 3, got {n!r}")
    if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def _check_image(image, n: int) -> None:
    image = _as_tensor(image, "image")
    if image.ndim != 4 or image.shape[1] != 3 or not image.is_floating_point():
        raise ValueError(f"expected image as (N, 3, H, W) float in [0, 1], got {tuple(image.shape)} {image.dtype}")
    check_map_parameters(n)
    if image.numel() and (image.min() < 0 or image.max() > 1):
        raise ValueError(f"expected image values in [0, 1], got [{float(image.min()):.4g}, {float(image.max()):.4g}]")


def _shift_slices(dy: int, dx: int, h: int, w: int):
    """Slices ``(p, q)`` of an (H, W) plane such that ``q`` is ``p`` moved by (dy, dx), both in the image."""
    p = (slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)))
    q = (slice(max(0, dy), h - max(0, -dy)), slice(max(0, dx), w - max(0, -dx)))
    return p, q


def _window_counts(h: int, w: int, r: int, like: torch.Tensor) -> torch.Tensor:
    """``(H, W)``: number of in-image pixels of the (2r+1) x (2r+1) window around each pixel."""
    def side(m):
        i = torch.arange(m, device=like.device)
        return (torch.clamp(i + r, max=m - 1) - torch.clamp(i - r, min=0) + 1).to(like.dtype)
    return side(h)[:, None] * side(w)[None, :]


def _normalise(pv: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Divide each map of ``(N, H, W)`` by its maximum; all zeros for a constant image.

    Without the constant-image test, a flat photo would give a map of rounding noise (torch's
    float32 ``pow`` can differ by an ulp between equal inputs) scaled up to 1.
    """
    if pv.numel() == 0:
        return pv
    constant = (image == image[..., :1, :1]).flatten(1).all(1)
    pv = pv * (~constant).to(pv.dtype)[:, None, None]
    peak = pv.amax(dim=(-2, -1), keepdim=True)
    return pv / torch.where(peak > 0, peak, torch.ones_like(peak))


@torch.no_grad()
def color_variance_map(image: torch.Tensor, n: int = 5, sigma: float = 1.0, metric: str = "ciede2000") -> torch.Tensor:
    """Pixel colour variance of the CV-PIRE thesis (Algorithm 1), normalised per image.

    For each pixel P and the in-image pixels Q of the n x n window around it::

        pV(P) = sqrt( sum_Q (g(dx, dy) * dE(Q, P))^2 / count(P) ),
        g(dx, dy) = exp(-(dx^2 + dy^2) / (2 sigma^2)) / (2 pi sigma^2),

    ``count`` the number of in-image window pixels including P itself (n^2 away from the
    borders; P contributes 0 to the sum), out-of-image neighbours skipped; then each image is
    divided by its maximum. ``dE`` is CIEDE2000 (symmetric) or CIE94 with the neighbour Q as
    reference colour (the argument order of Algorithm 1, ``dE(P_nb, P_center)``), on CIELAB D65.

    Each unordered pixel pair is computed once (dE(Q, P) for P's sum and dE(P, Q) for Q's; the
    same number for CIEDE2000): one vectorised pass per shift of the (n^2 - 1) / 2 half-window.

    Args:
        image: ``(N, 3, H, W)`` float sRGB in [0, 1], any device.
        n: window side, odd >= 3 (thesis: 5).
        sigma: standard deviation of the Gaussian weight, pixels (thesis: 1).
        metric: ``"ciede2000"`` (thesis) or ``"cie94"`` (its proposed faster alternative).

    Returns:
        ``(N, 1, H, W)`` in [0, 1], the input's dtype and device; max 1 unless the image is flat (all 0).

    Raises:
        ValueError: bad shape, dtype or range, n not odd >= 3, sigma <= 0, unknown metric.

    >>> img = torch.zeros(1, 3, 4, 6); img[..., 3:] = 1  # black | white edge
    >>> m = color_variance_map(img)
    >>> m.shape, [round(v, 2) for v in m[0, 0, 0].tolist()]
    (torch.Size([1, 1, 4, 6]), [0.0, 0.24, 1.0, 1.0, 0.24, 0.0])
    """
    _check_image(image, n)
    check_map_parameters(n, sigma, metric)
    planes = torch.stack(_planes(rgb_to_lab(image), 1))  # (4, N, H, W): L, a, b, C
    n_img, h, w = planes.shape[1:]
    planes = planes.flatten(2)  # (4, N, H * W)
    r = n // 2
    acc = planes.new_zeros(n_img, h * w)  # sum of (g dE)^2 over the window
    # Pixel p (flat index) and its neighbour q = p + dy * W + dx are processed in bands of whole
    # rows: contiguous slices, and on CPU about _BAND_ELEMENTS pairs per thread, so the
    # temporaries of dE00 stay in cache; a GPU takes the whole image at once. Pairs that wrap
    # around a row end get weight 0 (their column p + dx is outside [0, W)).
    per_band = _BAND_ELEMENTS * torch.get_num_threads() if acc.device.type == "cpu" else h * w * n_img
    band = max(1, per_band // max(1, n_img * w)) * w
    column = torch.arange(band, device=acc.device) % w
    for dy in range(0, min(r, h - 1) + 1):
        for dx in range(-min(r, w - 1), min(r, w - 1) + 1):
            if dy == 0 and dx <= 0:  # each unordered pair once: the half-window after the centre
                continue
            g = math.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma)) / (2 * math.pi * sigma * sigma)
            weight = ((column + dx >= 0) & (column + dx < w)).to(acc.dtype) * (g * g)
            shift = dy * w + dx
            for i in range(0, h * w - shift, band):
                j = min(i + band, h * w - shift)
                p, q = (..., slice(i, j)), (..., slice(i + shift, j + shift))
                lab_p, lab_q = planes[p].unbind(0), planes[q].unbind(0)
                if metric == "ciede2000":
                    d2 = _ciede2000_sq(*lab_p, *lab_q).clamp_min_(0).mul_(weight[: j - i])
                    acc[p] += d2
                    acc[q] += d2
                else:  # CIE94(neighbour, centre): q is the reference for acc[p], p for acc[q]
                    parts = _cie94_parts(*lab_p, *lab_q)
                    acc[p] += _cie94_sq_from_parts(*parts, c_ref=lab_q[3]).mul_(weight[: j - i])
                    acc[q] += _cie94_sq_from_parts(*parts, c_ref=lab_p[3]).mul_(weight[: j - i])
    acc = acc.view(n_img, h, w)
    pv = torch.sqrt(acc / _window_counts(h, w, r, acc))
    return _normalise(pv, image).unsqueeze(1).to(image.dtype)


@torch.no_grad()
def std_map(image: torch.Tensor, n: int = 3) -> torch.Tensor:
    """Local standard deviation of luminance (SD-PIRE), normalised per image.

    Luminance ``Y = 0.2126 R + 0.7152 G + 0.0722 B`` (BT.709 weights, as the thesis states)
    on the gamma-encoded [0, 1] values, like PIL's "L" but with BT.709 instead of the
    Rec.601 weights (0.299, 0.587, 0.114) that the thesis code used through PIL. Population
    standard deviation over the in-image part of the n x n window (fewer pixels at the
    borders), computed in two passes (mean, then squared deviations) so float32 stays
    accurate; then each image is divided by its maximum.

    Args:
        image: ``(N, 3, H, W)`` float sRGB in [0, 1], any device.
        n: window side, odd >= 3 (thesis: 3).

    Returns:
        ``(N, 1, H, W)`` in [0, 1], the input's dtype and device; a flat image gives zeros.

    Raises:
        ValueError: bad shape, dtype or range, n not odd >= 3.

    >>> img = torch.zeros(1, 3, 3, 4); img[..., 2:] = 1  # black | white edge
    >>> [round(v, 4) for v in std_map(img)[0, 0, 1].tolist()]
    [0.0, 1.0, 1.0, 0.0]
    """
    _check_image(image, n)
    x = image.to(_work_dtype(image))
    y = BT709[0] * x[:, 0] + BT709[1] * x[:, 1] + BT709[2] * x[:, 2]  # (N, H, W)
    h, w = y.shape[-2:]
    r = n // 2
    count = _window_counts(h, w, r, y)
    shifts = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if abs(dy) < h and abs(dx) < w]
    # Deviations from the centre pixel (the standard deviation does not change): exact zeros in
    # flat windows, no cancellation in float32.
    total = torch.zeros_like(y)
    for dy, dx in shifts:
        p, q = _shift_slices(dy, dx, h, w)
        total[(..., *p)] += y[(..., *q)] - y[(..., *p)]
    mean = total / count
    sq = torch.zeros_like(y)
    for dy, dx in shifts:
        p, q = _shift_slices(dy, dx, h, w)
        sq[(..., *p)] += (y[(..., *q)] - y[(..., *p)] - mean[(..., *p)]) ** 2
    return _normalise(torch.sqrt(sq / count), image).unsqueeze(1).to(image.dtype)


def ssim_masking_map(image: torch.Tensor, max_gain: float = 4.0) -> torch.Tensor:
    """Per-pixel, per-channel budget gain that costs every pixel the same SSIM: ``sqrt(1 + 2 s^2 / C2)``.

    For a small change ``d`` of a pixel whose Gaussian-window (sigma 1.5, as SSIM's) standard
    deviation is ``s``, SSIM's contrast-structure term drops by about ``d^2 / (2 s^2 + C2)``,
    ``C2 = (0.03 * 255)^2``. A budget proportional to ``sqrt(2 s^2 + C2)`` therefore spends the
    same SSIM everywhere: gain 1 in flat regions (sky, walls), more in texture, where the change is
    also masked for the eye. Unlike the thesis maps it is not normalised by the image maximum, so
    the flat-region budget is the same for every photo. Capped at ``max_gain``.

    Args:
        image: ``(N, 3, H, W)`` float sRGB in [0, 1].
        max_gain: largest multiple of the flat-region budget, >= 1.

    Returns:
        ``(N, 3, H, W)`` gains in [1, max_gain], the input's dtype and device.

    >>> flat = torch.full((1, 3, 8, 8), 0.5)
    >>> round(float(ssim_masking_map(flat).max()), 3)
    1.0
    """
    _check_image(image, 3)
    if max_gain < 1:
        raise ValueError(f"max_gain must be >= 1, got {max_gain}")
    x = image.to(_work_dtype(image))
    return torch.sqrt(1 + 2 * _ssim_window_variance(x) / _SSIM_C2).clamp(max=max_gain).to(image.dtype)


_SSIM_C2 = (SSIM_K2 * 255) ** 2


def _ssim_window_variance(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel variance, in grey levels squared, in SSIM's Gaussian window (sigma 1.5)."""
    x = x * 255
    mean = gaussian_blur(x, SSIM_SIGMA)
    return (gaussian_blur(x * x, SSIM_SIGMA) - mean * mean).clamp_min(0)


def ssim_cost_weights(image: torch.Tensor) -> torch.Tensor:
    """Per-pixel, per-channel weights ``w`` with ``1 - SSIM(x + d, x) ~ mean(w * d^2)``, ``d`` in grey levels.

    For a small change ``d`` that averages out over SSIM's window, the contrast-structure term of
    the window at ``q`` drops by ``sum_p g(q - p) d_p^2 / (2 s_q^2 + C2)`` (``g`` the Gaussian window,
    ``s_q`` the photo's window standard deviation), so pixel ``p`` costs ``w_p = (g * 1 / (2 s^2 + C2))_p``
    per squared grey level. A cheap, quadratic stand-in for SSIM in an attack's objective: it
    overestimates the cost of changes with a local mean (smooth, e.g. upsampled, perturbations) and
    leaves out the luminance term.

    Args:
        image: ``(N, 3, H, W)`` float sRGB in [0, 1], the original photo.

    Returns:
        ``(N, 3, H, W)`` weights, the input's dtype and device: ``1 / C2`` (about 0.017) in flat
        regions, less in texture.
    """
    _check_image(image, 3)
    x = image.to(_work_dtype(image))
    return gaussian_blur(1 / (2 * _ssim_window_variance(x) + _SSIM_C2), SSIM_SIGMA).to(image.dtype)


class SSIMPrice:
    """ssim-pire's price of a change to ``original`` (N, 3, H, W) in [0, 1]: ``weight * mean(w * (pixels -
    original)^2)`` per image, ``w`` the :func:`ssim_cost_weights` per squared [0, 1] unit, and its gradient.

    Called on perturbed ``pixels`` (no graph needed), it returns the (N,) price and its gradient with respect to
    ``pixels``, the values autograd's graph of that expression gives to the bit: the gradient's constant factor is
    made once by the same operations as autograd's backward (the weight, then the mean's division, then the
    product with ``w``) and doubles the difference as the square's backward does. The graph would allocate five
    tensors of the photo's size in every step, each a fresh mapping with its page faults: at 12 megapixels more
    than the network's passes cost beside them.
    """

    def __init__(self, original: torch.Tensor, weight: float):
        if not weight > 0:
            raise ValueError(f"the SSIM price's weight must be positive, got {weight}")
        self.original, self.weight = original, weight
        with torch.no_grad():
            self.cost = ssim_cost_weights(original) * 255 ** 2
            n = original.shape[0]
            spread = (torch.ones(n, device=original.device, dtype=original.dtype) * weight)[:, None, None, None]
            self.factor = spread.expand(original.shape) / original[0].numel() * self.cost

    def __call__(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            change = pixels - self.original
            price = self.weight * (change * change).mul_(self.cost).mean(dim=(1, 2, 3))
            return price, change.mul_(2).mul_(self.factor)


def flat_gain(image: torch.Tensor, threshold: float = 2.0) -> torch.Tensor:
    """Per-pixel gain in [0, 1] that leaves flat regions alone: 0 where the standard deviation of BT.709 luminance
    in the 7 x 7 window (:func:`advquery.quality.flat_pixels`'s window) is at most ``threshold`` grey levels,
    rising linearly to 1 at twice that. A change multiplied by it never touches sky or a plain wall, where the
    eye sees a pattern that SSIM hides.

    Args:
        image: ``(N, 3, H, W)`` float sRGB in [0, 1].
        threshold: grey levels (> 0).

    Returns:
        ``(N, 1, H, W)`` gains, the input's dtype and device.

    >>> flat = torch.full((1, 3, 9, 9), 0.5)
    >>> float(flat_gain(flat).max())
    0.0
    """
    _check_image(image, 3)
    if not threshold > 0:
        raise ValueError(f"threshold must be positive grey levels, got {threshold}")
    x = image.to(_work_dtype(image)) * 255
    y = (BT709[0] * x[:, 0] + BT709[1] * x[:, 1] + BT709[2] * x[:, 2])[:, None]
    r = FLAT_WINDOW // 2
    pad = (r, r, r, r) if min(y.shape[-2:]) > r else None

    def box(t):
        t = torch.nn.functional.pad(t, pad, mode="reflect") if pad else t
        return torch.nn.functional.avg_pool2d(t, FLAT_WINDOW, stride=1, padding=0 if pad else r,
                                              count_include_pad=False)
    mean = box(y)
    std = (box(y * y) - mean * mean).clamp_min(0).sqrt()
    return ((std - threshold) / threshold).clamp(0, 1).to(image.dtype)


def monochrome(image: torch.Tensor) -> torch.Tensor:
    """(N,) bool: which images are black and white, every pixel's three channels within :data:`MONOCHROME_LEVELS`
    grey levels of each other (a grey file decoded to RGB, or a black-and-white photo saved in colour). A change
    that differs between the channels draws colour into such a photo, which the eye sees at once where the same
    change in grey goes unseen: the attacks change the channels of these images together (:func:`share_channels`).

    >>> grey = torch.full((1, 3, 4, 4), 0.5)
    >>> monochrome(torch.cat([grey, torch.rand(1, 3, 4, 4)])).tolist()
    [True, False]
    """
    _check_image(image, 3)
    spread = image.amax(dim=1) - image.amin(dim=1)
    return spread.flatten(1).amax(dim=1) * 255 <= MONOCHROME_LEVELS + 1e-3


def share_channels(t: torch.Tensor, which: torch.Tensor) -> None:
    """In place: the channels of the images ``which`` ((N,) bool) of ``t`` (N, C, H, W) set to their mean, e.g. a
    perturbation or its gradient made the same in the three channels of a black-and-white photo
    (:func:`monochrome`)."""
    if bool(which.any()):
        t[which] = t[which].mean(dim=1, keepdim=True).expand_as(t[which])
