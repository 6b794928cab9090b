r"""Orthogonal and Stiefel weights as a ``torch.nn.utils.parametrize`` parametrization.

:func:`orthogonal` constrains a module's weight to have orthonormal columns (tall),
orthonormal rows (wide) or to be orthogonal (square). The unconstrained parameter is a
``(*, d, r)`` tensor of Householder reflectors, mapped to the weight by
:func:`difflinalg.householder_product` with exact reflections and a fixed vector of column
signs. No ``d x d`` matrix is stored or multiplied: memory and cost scale with the size of
the weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn.utils import parametrize

from .._checks import check_choice, check_min_dim, check_real_floating, check_tensor
from .._errors import DTypeError, ShapeError, describe
from ..orthogonal import householder_product

__all__ = ["HouseholderOrthogonal", "orthogonal"]

_CONV_TYPES = (
    torch.nn.Conv1d,
    torch.nn.Conv2d,
    torch.nn.Conv3d,
    torch.nn.ConvTranspose1d,
    torch.nn.ConvTranspose2d,
    torch.nn.ConvTranspose3d,
)
_INITIALIZE = ("qr", "identity")


class HouseholderOrthogonal(torch.nn.Module):
    r"""Parametrization ``A -> weight`` by exact Householder reflections and column signs.

    Let the weight be viewed as a matrix ``W`` of shape ``(*, n, k)`` (a batch of matrices, or
    ``weight.flatten(1)`` when ``flatten=True``), ``d = max(n, k)``, ``r = min(n, k)``. The
    parameter is a ``(*, d, r)`` tensor ``A`` whose strictly-lower part holds the reflectors,
    and the buffer ``signs`` is a ``(*, r)`` tensor of :math:`\pm 1`:

    .. math::
        F(A) = H_1 H_2 \cdots H_r \, I_{d \times r}\, \mathrm{diag}(s),\qquad
        H_j = I_d - \frac{2\, v_j v_j^T}{v_j^T v_j},\quad
        v_j = e_j + \textstyle\sum_{i > j} A_{ij}\, e_i,

    and ``W = F(A)`` if ``n >= k``, ``W = F(A)^T`` otherwise, so that :math:`W^T W = I_k`
    (tall or square) or :math:`W W^T = I_n` (wide) for every ``A``. Entries of ``A`` on or above
    the diagonal are not read (their gradient is zero); ``d r - r(r+1)/2`` numbers are free,
    the dimension of the Stiefel manifold :math:`V_r(\mathbb{R}^d)`.

    **Why the signs.** Since :math:`H_j e_1 = e_1` for ``j > 1``, the first column of the
    product is :math:`H_1 e_1`, whose first entry is :math:`(\|a_1\|^2 - 1)/(\|a_1\|^2 + 1)`,
    never ``+1``; and for ``d = r`` the last reflector is always
    :math:`I - 2 e_d e_d^T`, so the determinant is :math:`(-1)^d`. With the signs fixed, ``A``
    covers an open dense subset of the Stiefel manifold (of one connected component of
    :math:`O(d)` if ``d = r``); every frame is reached for the right ``s``, which
    :meth:`right_inverse` chooses. ``A = 0`` gives :math:`H_j = I - 2 e_j e_j^T`, so the
    default signs :math:`s = -1` make the zero parameter the identity frame
    :math:`I_{d \times r}`. The signs are a buffer: they are set by :meth:`right_inverse`
    and never trained (a gradient step cannot change a sign continuously anyway).

    Args:
        shape: shape of the parametrized weight, at least 2-D.
        flatten: if True, the weight is the matrix ``weight.flatten(1)`` of shape
            ``(shape[0], prod(shape[1:]))`` (convolutions); if False, a batch of
            ``(shape[-2], shape[-1])`` matrices.
        dtype: float32 or float64 (the dtype of ``signs``). Default: the default dtype.
        device: device of ``signs``.

    Raises:
        ShapeError (ValueError): ``shape`` with fewer than 2 dimensions.
        DTypeError (TypeError): a dtype other than float32/float64.

    References:
        A. S. Householder, "Unitary triangularization of a nonsymmetric matrix", J. ACM 5(4),
        1958.
        R. Schreiber, C. Van Loan, "A storage-efficient WY representation for products of
        Householder transformations", SIAM J. Sci. Stat. Comput. 10(1), 1989.
        Z. Mhammedi, A. Hellicar, A. Rahman, J. Bailey, "Efficient orthogonal parametrisation
        of recurrent neural networks using Householder reflections", ICML 2017.
        M. Lezcano-Casado, D. Martinez-Rubio, "Cheap orthogonal constraints in neural
        networks: a simple parametrization of the orthogonal and unitary group", ICML 2019.

    Example:
        >>> P = HouseholderOrthogonal((5, 3), dtype=torch.float64)
        >>> W = P(torch.zeros(5, 3, dtype=torch.float64))
        >>> torch.equal(W, torch.eye(5, 3, dtype=torch.float64))
        True
    """

    signs: torch.Tensor

    def __init__(self, shape: Sequence[int], *, flatten: bool = False,
                 dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        op = type(self).__name__
        self.shape = torch.Size(shape)
        if len(self.shape) < 2:
            raise ShapeError(f"{op}: expected a weight shape with at least 2 dimensions, "
                             f"but got shape={tuple(self.shape)}")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if dtype not in (torch.float32, torch.float64):
            raise DTypeError(f"{op}: expected dtype float32 or float64, but got dtype={dtype}")
        self.flatten = bool(flatten)
        if self.flatten:
            batch, n, k = (), self.shape[0], math.prod(self.shape[1:])
        else:
            batch, n, k = tuple(self.shape[:-2]), self.shape[-2], self.shape[-1]
        self.matrix_shape = torch.Size((*batch, n, k))
        self.transposed = n < k
        d, r = max(n, k), min(n, k)
        self.parameter_shape = torch.Size((*batch, d, r))
        self.register_buffer("signs", torch.full((*batch, r), -1.0, dtype=dtype, device=device))

    def forward(self, A: torch.Tensor) -> torch.Tensor:
        """The weight ``F(A)`` (transposed and reshaped to ``shape``), differentiable in ``A``."""
        Q = householder_product(A) * self.signs.unsqueeze(-2)
        if self.transposed:
            Q = Q.mT
        return Q.reshape(self.shape) if self.flatten else Q

    @torch.no_grad()
    def right_inverse(self, W: torch.Tensor) -> torch.Tensor:
        r"""Parameters ``A`` (returned) and ``signs`` (set in place) with ``F(A) = W``.

        ``W`` is factored by Householder QR (``torch.geqrf``), ``M = Q R`` with ``M`` the matrix
        view of ``W`` (transposed if wide). LAPACK's reflector ``j`` is
        :math:`I - \tau_j v_j v_j^T` with :math:`\tau_j = 2/\|v_j\|^2` (an exact reflection,
        kept as is) or :math:`\tau_j = 0` when the column is already zero below the diagonal.
        For the latter the parameter column is set to zero, which gives the exact reflection
        :math:`I - 2 e_j e_j^T` instead of ``I``; it commutes with every later reflector, so
        it is undone by flipping sign ``j``. Hence

        .. math::
            s_j = \operatorname{sign}(R_{jj}) \cdot (-1)^{[\tau_j = 0]},\qquad
            F(A) = Q\, \mathrm{diag}(\operatorname{sign} R_{jj}),

        the Q factor of ``M`` with a non-negative diagonal of R (a zero ``R_jj`` counts as
        positive). For an orthonormal ``M``, ``R`` is diagonal with entries :math:`\pm 1`, so
        ``F(A) = M`` up to rounding; for any other ``M`` the weight becomes the orthonormal
        factor of its QR decomposition. The reflector columns of ``A`` have norm at most 1.

        Args:
            W: ``(*shape)`` tensor with the dtype and device of ``signs``.

        Returns:
            ``(*, d, r)`` parameter, zero on and above the diagonal.

        Raises:
            ShapeError (ValueError): ``W.shape != shape``.
            DTypeError (TypeError): wrong type, dtype or device.
        """
        op = f"{type(self).__name__}.right_inverse"
        check_tensor(op, "W", W)
        check_real_floating(op, "W", W)
        if W.shape != self.shape:
            raise ShapeError(f"{op}: expected W of the parametrized shape {tuple(self.shape)}, "
                             f"but got {describe('W', W)}")
        if W.dtype != self.signs.dtype or W.device != self.signs.device:
            raise DTypeError(f"{op}: expected W with the dtype and device of the parametrization "
                             f"({describe('signs', self.signs)}), but got {describe('W', W)}")
        M = W.reshape(self.matrix_shape)
        if self.transposed:
            M = M.mT
        A, tau = torch.geqrf(M)
        skipped = tau == 0
        flip = (A.diagonal(dim1=-2, dim2=-1) < 0) ^ skipped
        # a new tensor, not copy_: a graph built with the old signs stays valid
        self.signs = 1.0 - 2.0 * flip.to(W.dtype)
        return A.tril(-1).masked_fill_(skipped.unsqueeze(-2), 0.0)

    def extra_repr(self) -> str:
        return (f"shape={tuple(self.shape)}, parameter_shape={tuple(self.parameter_shape)}, "
                f"flatten={self.flatten}")


def orthogonal(module: torch.nn.Module, name: str = "weight", *,
               initialize: str = "qr", flatten: bool | None = None) -> torch.nn.Module:
    r"""Constrain ``module.<name>`` to be orthogonal, by Householder reflectors.

    Registers a :class:`HouseholderOrthogonal` parametrization with
    :func:`torch.nn.utils.parametrize.register_parametrization`. Afterwards ``module.<name>``
    is computed on access as

    .. math::
        W = H_1 \cdots H_r\, I_{d \times r}\, \mathrm{diag}(s)
        \quad(\text{transposed if the weight is wide}),

    with :math:`W^T W = I` for tall and square weights and :math:`W W^T = I` for wide ones.
    The trained tensor is ``module.parametrizations.<name>.original`` of shape ``(*, d, r)``
    (``d = max``, ``r = min`` of the matrix dimensions; it is the *same* ``Parameter`` object
    as before registration, resized, so an optimizer built earlier keeps working); the ``r``
    column signs are the buffer ``module.parametrizations.<name>[0].signs``. That is all the
    state: no ``d x d`` base matrix, unlike :func:`torch.nn.utils.parametrizations.orthogonal`
    with its default ``use_trivialization=True``. The forward costs ``O(d r^2)`` (compact WY,
    :func:`difflinalg.householder_product`); so does assigning a new value.

    Every orthogonal matrix and every Stiefel frame is representable (``A`` and ``signs``
    together; see :class:`HouseholderOrthogonal`). Assigning ``module.<name> = Q`` sets the
    parameters through :meth:`HouseholderOrthogonal.right_inverse`: an orthonormal ``Q`` is
    reproduced up to rounding, any other matrix is replaced by the Q factor of its QR
    decomposition with non-negative ``diag(R)``.

    Matrix view: ``(*, n, k)`` weights are a batch of ``n x k`` matrices (like torch's
    parametrization). Convolution weights ``(out, in/groups, *kernel)`` (or
    ``(in, out/groups, *kernel)`` for transposed convolutions) are instead viewed as the single
    matrix ``weight.flatten(1)``, so that for ``out <= in * prod(kernel)`` the output
    channels' filters are orthonormal; torch's parametrization treats them as a batch of
    ``kernel`` matrices.

    Args:
        module: module holding the tensor (parameter or buffer) to constrain.
        name: attribute name of the tensor. Default ``"weight"``.
        initialize: ``"qr"`` (default): the weight starts as the Q factor of its current value
            (for a Gaussian initialisation this is a Haar-distributed random frame);
            ``"identity"``: the parameters start at zero and the weight at the identity frame
            ``eye(n, k)``.
        flatten: view the tensor as ``weight.flatten(1)`` (True) or as a batch of matrices
            (False). Default: True for ``torch.nn.Conv*``/``ConvTranspose*`` modules, else False.

    Returns:
        ``module``, with the parametrization registered.

    Raises:
        ShapeError (ValueError): no tensor called ``name``, a tensor with fewer than 2
            dimensions, an uninitialised lazy parameter, an invalid ``initialize``.
        DTypeError (TypeError): ``module`` is not a ``torch.nn.Module``, ``module.<name>`` is not
            a tensor, or its dtype is not float32/float64.

    References:
        M. Lezcano-Casado, D. Martinez-Rubio, "Cheap orthogonal constraints in neural
        networks: a simple parametrization of the orthogonal and unitary group", ICML 2019.
        Z. Mhammedi, A. Hellicar, A. Rahman, J. Bailey, "Efficient orthogonal parametrisation
        of recurrent neural networks using Householder reflections", ICML 2017.

    Example:
        >>> layer = orthogonal(torch.nn.Linear(3, 5))
        >>> W = layer.weight
        >>> torch.allclose(W.T @ W, torch.eye(3), atol=1e-6)
        True
        >>> tuple(layer.parametrizations.weight.original.shape)
        (5, 3)
    """
    op = "orthogonal"
    if not isinstance(module, torch.nn.Module):
        raise DTypeError(f"{op}: expected module to be a torch.nn.Module, "
                         f"but got {type(module).__name__}")
    check_choice(op, "initialize", initialize, _INITIALIZE)
    if not hasattr(module, name):
        raise ShapeError(f"{op}: expected a parameter or buffer module.{name}, but got a "
                         f"{type(module).__name__} without an attribute {name!r}")
    weight = check_tensor(op, f"module.{name}", getattr(module, name))
    if isinstance(weight, torch.nn.parameter.UninitializedParameter):
        raise ShapeError(f"{op}: expected an initialised tensor, but got an uninitialised lazy "
                         f"parameter module.{name}; run a forward pass first")
    check_real_floating(op, f"module.{name}", weight)
    check_min_dim(op, f"module.{name}", weight, 2, "(*, n, k)")
    if flatten is None:
        flatten = isinstance(module, _CONV_TYPES)
    param = HouseholderOrthogonal(weight.shape, flatten=flatten, dtype=weight.dtype,
                                  device=weight.device)
    # registration resizes `weight` (the same Parameter object) to the parameter's shape
    parametrize.register_parametrization(module, name, param)
    if initialize == "identity":
        eye = torch.eye(*param.matrix_shape[-2:], dtype=param.signs.dtype,
                        device=param.signs.device)
        setattr(module, name, eye.expand(param.matrix_shape).reshape(param.shape))
    return module
