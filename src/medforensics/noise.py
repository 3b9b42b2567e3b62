"""Noise and robust-statistics primitives shared by the detectors and the forgers.

One home for estimators that were written out several times across the package:

* :func:`immerkaer_response` / :func:`estimate_sigma` -- Immerkaer's (1996) fast noise variance
  estimate: the difference of two Laplacians cancels smooth structure and ramps, what is left is
  the noise;
* :func:`mad_sigma` -- the robust standard deviation ``1.4826 x MAD`` (exact for a Gaussian);
* :func:`robust_z` -- robust z-scores ``(x - median) / mad_sigma`` with a floor on the spread.

Only numpy, scipy and OpenCV are imported here, so that every part of the package may use it.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["IMMERKAER_KERNEL", "IMMERKAER_GAIN", "MAD_SCALE", "immerkaer_response", "estimate_sigma",
           "mad_sigma", "robust_z"]

#: Immerkaer's 3x3 operator (the difference of two Laplacians): blind to edges and ramps.
IMMERKAER_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
#: ``sigma = IMMERKAER_GAIN * mean(|IMMERKAER_KERNEL * I|)`` for white Gaussian noise.
IMMERKAER_GAIN = math.sqrt(math.pi / 2) / 6
#: ``sigma = MAD_SCALE * MAD`` for a Gaussian sample (``1 / Phi^-1(3/4)``).
MAD_SCALE = 1.4826


def immerkaer_response(image: np.ndarray) -> np.ndarray:
    """Absolute response of Immerkaer's noise operator.

    Parameters
    ----------
    image : ndarray
        2D image (any real dtype; OpenCV also filters up to 4 channels of an ``(h, w, c)`` array
        independently).

    Returns
    -------
    response : ndarray of float64
        ``|N * image|`` with ``N = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]``, same shape as
        ``image``, the border handled by reflection (``cv2.BORDER_REFLECT``). The outermost pixel
        ring depends on the reflection; :func:`estimate_sigma` leaves it out.

    Notes
    -----
    ``N`` is zero on constants, on linear ramps and on a sum of a function of the row and a
    function of the column, so smooth anatomy contributes little; for white Gaussian noise of
    standard deviation ``sigma`` the response has standard deviation ``6 * sigma``.

    Examples
    --------
    >>> import numpy as np
    >>> ramp = np.add.outer(np.arange(5.0), 2 * np.arange(5.0))   # a plane: no response
    >>> immerkaer_response(ramp)[1:-1, 1:-1]
    array([[0., 0., 0.],
           [0., 0., 0.],
           [0., 0., 0.]])
    >>> spike = np.zeros((5, 5)); spike[2, 2] = 1.0
    >>> immerkaer_response(spike)[1:-1, 1:-1]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    """
    return np.abs(cv2.filter2D(np.asarray(image, np.float64), -1, IMMERKAER_KERNEL,
                               borderType=cv2.BORDER_REFLECT))


def estimate_sigma(image: np.ndarray, *, exclude_edges: float = 0.0) -> float:
    """Estimate of the (Gaussian) noise standard deviation of an image.

    Immerkaer's estimator: ``sigma = sqrt(pi / 2) / 6 * mean(|N * image|)`` over the interior
    (the outermost pixel ring, which depends on the border handling, is dropped).

    Parameters
    ----------
    image : ndarray
        2D image, in its own units (the result is in the same units).
    exclude_edges : float, optional
        Fraction ``q`` in ``[0, 1)`` of the largest responses left out as sharp edges: only
        responses strictly below their ``1 - q`` quantile (linear interpolation) are averaged.
        ``0`` (the default) keeps them all. Where every response equals that quantile (a flat
        image) they are all kept.

    Returns
    -------
    sigma : float
        Estimated noise standard deviation. With ``exclude_edges > 0`` the estimate is biased low
        for pure noise (the largest responses of the noise itself are dropped too).

    See Also
    --------
    immerkaer_response : the per-pixel response that is averaged.
    mad_sigma : a robust standard deviation of any sample.

    References
    ----------
    .. [1] J. Immerkaer, "Fast Noise Variance Estimation", Computer Vision and Image
           Understanding, 64(2), pp. 300-302, 1996. :DOI:`10.1006/cviu.1996.0060`

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> noisy = 100 + 5.0 * rng.standard_normal((256, 256))
    >>> round(estimate_sigma(noisy), 1)
    5.0
    >>> estimate_sigma(np.full((8, 8), 7.0))
    0.0

    A sharp curved edge inflates the estimate; leaving out the largest 2 % of responses removes it:

    >>> yy, xx = np.mgrid[:256, :256]
    >>> disc = 1000.0 * ((yy - 128) ** 2 + (xx - 128) ** 2 < 80 ** 2) + noisy - 100
    >>> round(estimate_sigma(disc), 1), round(estimate_sigma(disc, exclude_edges=0.02), 1)
    (9.7, 5.0)
    """
    if not 0.0 <= exclude_edges < 1.0:
        raise ValueError(f"exclude_edges must be in [0, 1), not {exclude_edges!r}")
    a = immerkaer_response(image)[1:-1, 1:-1]
    if exclude_edges > 0:
        q = np.quantile(a, 1.0 - exclude_edges)
        kept = a[a < q]
        a = kept if kept.size else a[a <= q]
    return float(IMMERKAER_GAIN * a.mean())


def mad_sigma(x: np.ndarray, axis: int | tuple[int, ...] | None = None, *,
              nan_policy: str = "propagate") -> float | np.ndarray:
    """Robust standard deviation: ``1.4826 * median(|x - median(x)|)``.

    Parameters
    ----------
    x : array_like
        Sample. Its dtype is kept (a float32 sample gives a float32 computation).
    axis : int or tuple of ints, optional
        Axis along which the medians are taken; ``None`` (the default) uses the flattened array.
    nan_policy : {'propagate', 'omit'}, optional
        ``'propagate'`` (the default) uses :func:`numpy.median` (a NaN gives NaN);
        ``'omit'`` uses :func:`numpy.nanmedian` (NaNs are ignored).

    Returns
    -------
    sigma : float or ndarray
        A Python float when ``axis`` is ``None``, else an array with ``axis`` removed. An empty
        sample gives NaN (with numpy's warning), as :func:`numpy.median` does.

    Examples
    --------
    >>> import numpy as np
    >>> round(mad_sigma(np.random.default_rng(0).standard_normal(100_000)), 2)
    1.0
    >>> mad_sigma([1.0, 2.0, 3.0, 4.0, 100.0])           # the outlier barely counts
    1.4826
    >>> mad_sigma([[1.0, 2.0, np.nan], [0.0, 0.0, 2.0]], axis=1, nan_policy="omit")
    array([0.7413, 0.    ])
    """
    if nan_policy == "propagate":
        median = np.median
    elif nan_policy == "omit":
        median = np.nanmedian
    else:
        raise ValueError(f"nan_policy must be 'propagate' or 'omit', not {nan_policy!r}")
    x = np.asarray(x)
    centre = median(x, axis=axis, keepdims=True)
    s = MAD_SCALE * median(np.abs(x - centre), axis=axis)
    return float(s) if axis is None else s


def robust_z(x: np.ndarray, *, floor: float = 1e-12) -> np.ndarray:
    """Robust z-scores: ``(x - median(x)) / mad_sigma(x)``, NaNs ignored in both statistics.

    Parameters
    ----------
    x : array_like
        Values (converted to float64; NaNs stay NaN in the output).
    floor : float, optional
        Where the robust spread is below ``floor`` (or not finite) the scores are all zero:
        a sample with no spread has nothing unusual in it.

    Returns
    -------
    z : ndarray of float64
        Same shape as ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> robust_z([1.0, 2.0, 3.0, 4.0, 100.0]).round(2)
    array([-1.35, -0.67,  0.  ,  0.67, 65.43])
    >>> robust_z([5.0, 5.0, 5.0])
    array([0., 0., 0.])
    """
    v = np.asarray(x, dtype=np.float64)
    med = np.nanmedian(v)
    mad = MAD_SCALE * np.nanmedian(np.abs(v - med))
    if not np.isfinite(mad) or mad < floor:
        return np.zeros_like(v)
    return (v - med) / mad
