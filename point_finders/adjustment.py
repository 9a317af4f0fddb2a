"""Weight Adjustment (paper, Section 4; METHODS.md "Shared building blocks").

``adjust(W, F_target, F_source) = W F_targetᵀ pinv(F_sourceᵀ)`` is the least-squares ``W'`` with
``F_source W'ᵀ ≈ F_target Wᵀ``. It is computed from Gram matrices, never from an SVD of the
``N x h`` feature matrix: ``pinv(F) = (FᵀF)⁺ Fᵀ = Fᵀ (FFᵀ)⁺``, formed on the smaller side.
"""
import torch
from scipy.linalg import blas

import distributed


def gram(F):
    """``Fᵀ F`` for an ``N x h`` matrix; on the CPU through BLAS syrk (half the FLOPs of a GEMM)."""
    return symmetric(gram_upper(F))


def gram_upper(F):
    """A matrix whose upper triangle is that of ``Fᵀ F`` (``symmetric`` completes it): on the CPU
    BLAS syrk, which computes only that triangle; elsewhere the whole product."""
    if F.device.type != "cpu" or F.dtype not in (torch.float32, torch.float64):
        return F.T @ F
    syrk = blas.ssyrk if F.dtype == torch.float32 else blas.dsyrk
    return torch.from_numpy(syrk(1.0, F.contiguous().numpy().T, trans=0))  # Fortran view, no copy


def symmetric(upper):
    """The symmetric matrix with the upper triangle of ``upper``."""
    return upper.triu() + upper.triu(1).T


class NormalEquations:
    """``G⁺`` of a Gram matrix ``G`` (symmetric positive semi-definite), factored once, in float64.

    Features that are zero on every sample (dead ReLUs) are dropped exactly, which is what the
    pseudo-inverse does with them (their rows of every answer are 0). The rest is factored by
    Cholesky; if that block is numerically singular at the precision ``eps`` the features were
    computed in, an eigendecomposition with relative cut-off ``eps`` gives the pseudo-inverse.
    """

    def __init__(self, G, eps):
        G = G.double()
        self.size = len(G)
        self.active = torch.nonzero(torch.diagonal(G) > 0).squeeze(1)
        self.cholesky = self.vectors = None
        if len(self.active) == 0:
            return
        Ga = G[self.active][:, self.active]
        L, info = torch.linalg.cholesky_ex(Ga)
        if info == 0 and torch.diagonal(L).min() ** 2 > eps * torch.diagonal(Ga).max():
            self.cholesky = L
        else:
            values, vectors = torch.linalg.eigh(Ga)
            keep = values > eps * values.max()
            self.vectors, self.inverse_values = vectors[:, keep], 1.0 / values[keep]

    def solve(self, B):
        """``G⁺ B`` (float64)."""
        B = B.double()
        out = torch.zeros(self.size, *B.shape[1:], dtype=B.dtype, device=B.device)
        if self.cholesky is not None:
            out[self.active] = torch.cholesky_solve(B[self.active], self.cholesky)
        elif self.vectors is not None:
            V = self.vectors
            out[self.active] = V @ (self.inverse_values[:, None] * (V.T @ B[self.active]))
        return out


class LeastSquares:
    """``pinv(F)`` for features ``F`` (``N x h``), factored once and applied to many targets."""

    def __init__(self, F):
        self.F, self.dtype = F, F.dtype
        self.sample_side = len(F) < F.shape[1]
        eps = torch.finfo(F.dtype).eps
        self.equations = NormalEquations(gram(F.T) if self.sample_side else gram(F), eps)

    def fit(self, T):
        """The minimum-norm ``W'`` (``out x h``) minimising ``||F W'ᵀ - T||``."""
        # (Tᵀ F)ᵀ rather than Fᵀ T: BLAS is several times faster with this layout for N x h F
        if self.sample_side:
            return self.equations.solve(T).to(self.dtype).T @ self.F
        return self.equations.solve((T.T @ self.F).T).T.to(self.dtype)


class StreamingLeastSquares:
    """``pinv(F) T_k`` for features ``F`` and one or more target matrices ``T_k`` that arrive in
    row chunks, in a single pass over the data.

    Chunks are kept while they total at most ``keep_bytes`` (then the problem is solved as a whole,
    on the smaller side: few samples need no ``h x h`` system; not under ``torchrun``, where the
    ranks' rows meet in the Gram matrix); beyond that they are folded into
    the Gram matrix ``FᵀF`` and the products ``FᵀT_k``, accumulated in float64, so memory stays
    bounded whatever the number of samples (conv patch features of a whole training set). Either
    way the normal equations are factored once for all targets.
    """

    def __init__(self, keep_bytes=2 ** 26):
        self.keep_bytes, self.chunks, self.gram = keep_bytes, [], None

    def add(self, F, *targets):
        """One row chunk of the features and of each target matrix."""
        self.chunks.append((F, targets))
        if self.gram is None and sum(f.numel() * f.element_size()
                                     for f, _ in self.chunks) <= self.keep_bytes:
            return
        self._fold()

    def _fold(self):
        """Fold the kept chunks into the Gram matrix and the products (created at the first)."""
        pending, self.chunks = self.chunks, []
        if self.gram is None:
            F, targets = pending[0]
            self.dtype, self.eps = F.dtype, torch.finfo(F.dtype).eps
            self.gram = torch.zeros(F.shape[1], F.shape[1], dtype=torch.float64, device=F.device)
            self.cross = [torch.zeros(F.shape[1], t.shape[1], dtype=torch.float64, device=F.device)
                          for t in targets]
        for f, ts in pending:
            self.gram.add_(gram_upper(f))  # in float64; completed once, in fit()
            for cross, t in zip(self.cross, ts):
                cross += (t.T @ f).T.double()

    def _combine_ranks(self):
        """Every rank's rows in this one: gathered chunks, or the summed Gram matrix and products."""
        kept = sum(f.numel() * f.element_size() for f, _ in self.chunks) if self.gram is None \
            else self.keep_bytes + 1
        if distributed.sums(kept)[0] <= self.keep_bytes:
            count = len(self.chunks[0][1])
            rows = [torch.cat([ts[k] for _, ts in self.chunks]) for k in range(count)]
            features = distributed.gather_rows(torch.cat([f for f, _ in self.chunks]))
            self.chunks = [(features, tuple(distributed.gather_rows(t) for t in rows))]
            return
        self._fold()
        for total in [self.gram, *self.cross]:
            distributed.all_reduce(total)

    def fit(self):
        """For each target matrix, the minimum-norm ``W'`` (``out x h``) minimising ``||F W'ᵀ - T||``.

        Under ``torchrun`` each rank has added its shard's rows; every rank gets the answer of one
        process that added all of them: where their chunks total at most ``keep_bytes`` they are
        gathered and solved as a whole, else the Gram matrices and products are summed over the
        ranks before the solve."""
        if distributed.active():
            self._combine_ranks()
        if self.gram is None:
            solver = LeastSquares(torch.cat([f for f, _ in self.chunks]))
            count = len(self.chunks[0][1])
            return [solver.fit(torch.cat([ts[k] for _, ts in self.chunks])) for k in range(count)]
        equations = NormalEquations(symmetric(self.gram), self.eps)
        return [equations.solve(cross).T.to(self.dtype) for cross in self.cross]


def outputs_of(W, features):
    """What weight ``W`` (dense, or a conv kernel as an ``(out, C*9)`` matrix) makes of ``features``."""
    return features @ W.reshape(len(W), -1).T


def adjustment_targets(W, inputs):
    """What weight ``W`` makes of ``inputs``, the features entering its layer: the right-hand side
    weight adjustment reproduces (``outputs_of`` on their ``feature_matrix``)."""
    return outputs_of(W, feature_matrix(inputs))


class WeightAdjustment:
    """Weight adjustment, streamed over batches (paper, Section 4; docs/METHODS.md, "Shared
    building blocks"): incoming weights of shape ``shape`` for a layer whose input is ``inputs``,
    fitted in the least-squares sense to one or more target outputs on the same samples.

    ``add(inputs, *targets)`` once per batch (``targets`` from ``adjustment_targets``, one per
    weight to fit), then ``fit()``: one weight per target. Every finder and the WA(n) ensembles
    use it; ``adjust`` is its one-batch case.
    """

    def __init__(self, shape):
        self.shape, self.solver = shape, StreamingLeastSquares()

    def add(self, inputs, *targets):
        self.solver.add(feature_matrix(inputs), *targets)

    def fit(self):
        return [W.reshape(self.shape) for W in self.solver.fit()]


def adjust(W, F_target, F_source):
    """WA: new incoming weights for features ``F_source`` reproducing ``W`` applied to ``F_target``.

    ``W`` may be a conv kernel ``(out, C, k, k)`` when the features are patch matrices ``(N, C*k*k)``;
    the answer has the shape of ``W``.
    """
    fit = WeightAdjustment(W.shape)
    fit.add(F_source, adjustment_targets(W, F_target))
    return fit.fit()[0]


def feature_matrix(inputs):
    """The ``N x h`` matrix weight adjustment works on, from a layer's input (METHODS.md, "Feature
    maps"): dense inputs as they are; conv inputs ``(B, C, H, W)`` as every 3x3 patch (zero padding
    1, stride ``max(W // 2, 1)``, i.e. 4 patches per image in VGG16), each flattened to ``C*9``
    values in the order of a conv kernel ``(out, C, 3, 3)`` reshaped to ``(out, C*9)``."""
    if inputs.dim() != 4:
        return inputs.flatten(1)
    stride = max(inputs.shape[-1] // 2, 1)
    patches = torch.nn.functional.unfold(inputs, kernel_size=3, padding=1, stride=stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])
