r"""Second-order (covariance) pooling of CNN features with matrix normalisation.

Bilinear / second-order pooling replaces the average of a feature map by its covariance
:math:`\Sigma = \frac{1}{M}\sum_m (x_m - \mu)(x_m - \mu)^T` over the ``M`` spatial positions,
followed by a matrix function that tames its spectrum, usually the square root (Lin & Maji,
"Improved bilinear pooling with CNNs", BMVC 2017; Li et al., "Towards faster training of
global covariance pooling networks by iterative matrix square root normalization",
CVPR 2018) or the logarithm (Ionescu et al., "Matrix backpropagation for deep networks with
structured layers", ICCV 2015).
"""

from __future__ import annotations

import torch

from .._checks import check_choice, check_min_dim, check_real_floating, check_tensor
from .._errors import ShapeError
from ..spectral import logm_spd
from ..sqrtm import METHODS, sqrtm

__all__ = ["CovariancePooling"]

_NORMALIZATIONS = ("sqrt", "log", "none")
_FLATTEN = ("triu", "none")


class CovariancePooling(torch.nn.Module):
    r"""``(N, C, *spatial)`` features -> normalised ``C x C`` covariance per sample.

    Steps: covariance over the spatial positions (centred unless ``center=False``);
    regularisation :math:`\Sigma + \epsilon\,\frac{\mathrm{tr}\,\Sigma}{C} I` (relative to the
    mean eigenvalue, so it does not depend on the scale of the features); then
    ``normalization``: ``"sqrt"`` (:func:`difflinalg.sqrtm`, matmul iterations or the eigen
    engine, exact gradients either way), ``"log"`` (:func:`difflinalg.logm_spd`) or
    ``"none"``; then ``flatten="triu"`` keeps the upper triangle, ``(N, C (C + 1) / 2)``
    (the matrix is symmetric), or ``"none"`` returns ``(N, C, C)``.

    Args:
        normalization: ``"sqrt"`` (default), ``"log"`` or ``"none"``.
        method: :func:`difflinalg.sqrtm` method for ``"sqrt"`` (default ``"auto"``).
        eps: relative regularisation (default 1e-5); 0 disables it (then rank-deficient
            covariances, ``M <= C``, rely on the eigen engine's clamping).
        center: subtract the spatial mean first (default True).
        flatten: ``"triu"`` (default) or ``"none"``.

    Shape:
        input ``(N, C, *spatial)`` with at least one spatial dim, float32 or float64;
        output ``(N, C (C + 1) / 2)`` or ``(N, C, C)``.

    Example:
        >>> pool = CovariancePooling()
        >>> pool(torch.randn(2, 8, 7, 7)).shape
        torch.Size([2, 36])
    """

    def __init__(self, *, normalization: str = "sqrt", method: str = "auto", eps: float = 1e-5,
                 center: bool = True, flatten: str = "triu") -> None:
        super().__init__()
        op = "CovariancePooling"
        check_choice(op, "normalization", normalization, _NORMALIZATIONS)
        check_choice(op, "method", method, METHODS)
        check_choice(op, "flatten", flatten, _FLATTEN)
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ShapeError(f"{op}: expected eps >= 0, but got eps={eps!r}")
        self.normalization, self.method, self.eps = normalization, method, float(eps)
        self.center, self.flatten = bool(center), flatten

    def extra_repr(self) -> str:
        return (f"normalization={self.normalization!r}, method={self.method!r}, "
                f"eps={self.eps:g}, center={self.center}, flatten={self.flatten!r}")

    def covariance(self, x: torch.Tensor) -> torch.Tensor:
        """The regularised ``(N, C, C)`` covariance of ``x`` ``(N, C, *spatial)``."""
        op = "CovariancePooling"
        check_tensor(op, "input", x)
        check_real_floating(op, "input", x)
        check_min_dim(op, "input", x, 3, "(N, C, *spatial)")
        feats = x.flatten(2)
        m = feats.shape[-1]
        if self.center:
            feats = feats - feats.mean(-1, keepdim=True)
        cov = feats @ feats.mT / m
        if self.eps:
            c = cov.shape[-1]
            mean_eig = cov.diagonal(dim1=-2, dim2=-1).sum(-1) / max(c, 1)
            ridge = (self.eps * mean_eig).clamp_min(torch.finfo(cov.dtype).tiny)
            cov = cov + ridge[:, None, None] * torch.eye(c, dtype=cov.dtype, device=cov.device)
        return cov

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.covariance(x)
        if self.normalization == "sqrt":
            cov = sqrtm(cov, method=self.method)
        elif self.normalization == "log":
            cov = logm_spd(cov)
        if self.flatten == "triu":
            c = cov.shape[-1]
            rows, cols = torch.triu_indices(c, c, device=cov.device)
            return cov[:, rows, cols]
        return cov
