"""Independent float64 NumPy transcription of docs/METHODS.md (Connectors, Shared building blocks, Table 1, Table 2), used as a test oracle."""

import numpy as np
from scipy.optimize import linear_sum_assignment


def relu(A):
    """relu(A) = max(A, 0) (METHODS.md, Notation)."""
    return np.maximum(A, 0.0)


def lin_connect(S1, S2, t):
    """(1 - t) * S1 + t * S2 (METHODS.md, Connectors, Eq. 5)."""
    return (1.0 - t) * S1 + t * S2


def arc_connect(S1, S2, t):
    """m + cos(pi t/2)(S1 - m) + sin(pi t/2)(S2 - m), m = vstack([S1, S2]).mean(axis=0) (METHODS.md, Connectors, Eq. 6)."""
    m = np.vstack([S1, S2]).mean(axis=0)
    return m + np.cos(np.pi * t / 2) * (S1 - m) + np.sin(np.pi * t / 2) * (S2 - m)


def adjust(W, F_target, F_source):
    """W @ F_target.T @ pinv(F_source.T) via SVD pinv (METHODS.md, Shared building blocks, Weight Adjustment)."""
    return W @ F_target.T @ np.linalg.pinv(F_source.T)


def ot_permutation(A, B):
    """perm with B[perm] aligned to A, exact assignment on max-normalised squared distances (METHODS.md, Shared building blocks, OT matching)."""
    C = ((A[:, None, :] - B[None, :, :]) ** 2).sum(axis=2)
    C = C / C.max()
    _, perm = linear_sum_assignment(C)
    return perm


def features(params, X):
    """Features f_0 = X, f_{i+1} = relu(f_i W_i^T), returned as [f_0, ..., f_{L-1}] (METHODS.md, Table 2)."""
    f = [X]
    for W in params[:-1]:
        f.append(relu(f[-1] @ W.T))
    return f


def forward(params, X):
    """Network output on X for a Table-1 net (1-D biases present) or a bias-free Table-2 net (METHODS.md, Table 1 / Table 2)."""
    if any(p.ndim == 1 for p in params):
        W0, b0, W1, b1 = params
        return relu(X @ W0.T + b0) @ W1.T + b1
    return features(params, X)[-1] @ params[-1].T


def _neuron_samples(W0, b0, W1):
    """Neuron sample j = [W0[j, :], b0[j], W1[:, j]] as rows of an (h, d + 1 + c) matrix (METHODS.md, Table 1)."""
    return np.hstack([W0, b0[:, None], W1.T])


def _split_neuron_samples(S, d):
    """Inverse of _neuron_samples: returns W0, b0, W1 (METHODS.md, Table 1)."""
    return S[:, :d], S[:, d], S[:, d + 1:].T


def with_bias(p1, p2, X, t, connect):
    """PointFinderWithBias: connect neuron samples, b1 as its own array (METHODS.md, Table 1)."""
    W0a, b0a, W1a, b1a = p1
    W0b, b0b, W1b, b1b = p2
    S = connect(_neuron_samples(W0a, b0a, W1a), _neuron_samples(W0b, b0b, W1b), t)
    W0, b0, W1 = _split_neuron_samples(S, W0a.shape[1])
    return [W0, b0, W1, connect(b1a, b1b, t)]


def transportation(p1, p2, X, t, connect):
    """PointFinderTransportation: OT-match model 2's neuron samples to model 1's, then connect; b1 as its own array (METHODS.md, Table 1)."""
    W0a, b0a, W1a, b1a = p1
    W0b, b0b, W1b, b1b = p2
    S1 = _neuron_samples(W0a, b0a, W1a)
    S2 = _neuron_samples(W0b, b0b, W1b)
    S = connect(S1, S2[ot_permutation(S1, S2)], t)
    W0, b0, W1 = _split_neuron_samples(S, W0a.shape[1])
    return [W0, b0, W1, connect(b1a, b1b, t)]


def inverse_with_bias(p1, p2, X, t, connect):
    """PointFinderInverseWithBias: t in [0, 1] move layer 0 and re-fit W1; t in (1, 2] connect W1_adj, b1 to model 2's (METHODS.md, Table 1)."""
    W0a, b0a, W1a, b1a = p1
    W0b, b0b, W1b, b1b = p2
    F1 = relu(X @ W0a.T + b0a)
    if t <= 1:
        W0 = connect(W0a, W0b, t)
        b0 = connect(b0a, b0b, t)
        F = relu(X @ W0.T + b0)
        return [W0, b0, adjust(W1a, F1, F), b1a]
    s = t - 1
    F2 = relu(X @ W0b.T + b0b)
    W1_adj = adjust(W1a, F1, F2)
    return [W0b, b0b, connect(W1_adj, W1b, s), connect(b1a, b1b, s)]


def inverse_with_bias_ot(p1, p2, X, t, connect):
    """PointFinderInverseWithBiasOT: permute model 2's hidden units by OT on rows of W0 alone, then InverseWithBias (METHODS.md, Table 1)."""
    W0b, b0b, W1b, b1b = p2
    perm = ot_permutation(p1[0], W0b)
    return inverse_with_bias(p1, [W0b[perm], b0b[perm], W1b[:, perm], b1b], X, t, connect)


def simultaneous(p1, p2, X, t, connect):
    """PointFinderSimultaneous: connect every parameter tensor independently (METHODS.md, Table 2)."""
    return [connect(a, b, t) for a, b in zip(p1, p2)]


def _segment(t, n_segments):
    """Segment l = floor(t), s = t - l, clamped so t >= n_segments gives l = n_segments - 1, s = 1 (METHODS.md, Table 2)."""
    if t >= n_segments:
        return n_segments - 1, 1.0
    l = int(np.floor(t))
    return l, t - l


def _butterfly_adjusted(p1, p2, X):
    """A_0 = W_0^1, A_i = adjust(W_i^1, f^1_i, f^2_i) for i = 1..L-2, A_{L-1} = W_{L-1}^2 (METHODS.md, Table 2, StepWiseButterfly)."""
    L = len(p1)
    f1, f2 = features(p1, X), features(p2, X)
    return [p1[0]] + [adjust(p1[i], f1[i], f2[i]) for i in range(1, L - 1)] + [p2[L - 1]]


def _inverse_adjusted(p1, p2, X):
    """A_0 = W_0^1, A_i = adjust(W_i^1, f^1_i, f^2_i) for i = 1..L-1 (METHODS.md, Table 2, StepWiseInverse)."""
    f1, f2 = features(p1, X), features(p2, X)
    return [p1[0]] + [adjust(p1[i], f1[i], f2[i]) for i in range(1, len(p1))]


def step_wise_butterfly(p1, p2, X, t, connect):
    """PointFinderStepWiseButterfly: [W^2_{<l}, connect(A_l, W_l^2), connect(W_{l+1}^1 T, A_{l+1} T) T, W^1_{>l+1}] (METHODS.md, Table 2)."""
    L = len(p1)
    A = _butterfly_adjusted(p1, p2, X)
    l, s = _segment(t, L - 1)
    W_l = connect(A[l], p2[l], s)
    W_next = connect(p1[l + 1].T, A[l + 1].T, s).T
    return list(p2[:l]) + [W_l, W_next] + list(p1[l + 2:])


def step_wise_transportation(p1, p2, X, t, connect):
    """PointFinderStepWiseTransportation: OT-match butterflies [A_l, W_{l+1}^1 T] and [W_l^2, A_{l+1} T], connect, split back (METHODS.md, Table 2)."""
    L = len(p1)
    A = _butterfly_adjusted(p1, p2, X)
    l, s = _segment(t, L - 1)
    d = p1[l].shape[1]
    B1 = np.hstack([A[l], p1[l + 1].T])
    B2 = np.hstack([p2[l], A[l + 1].T])
    B = connect(B1, B2[ot_permutation(B1, B2)], s)
    return list(p2[:l]) + [B[:, :d], B[:, d:].T] + list(p1[l + 2:])


def _step_wise_inverse_path(p1, p2, X, t, connect, use_ot):
    """Shared body of PointFinderStepWiseInverse and PointFinderStepWiseInverseOT (METHODS.md, Table 2)."""
    L = len(p1)
    A = _inverse_adjusted(p1, p2, X)
    l, s = _segment(t, L)
    if l == L - 1:
        return list(p2[:L - 1]) + [connect(A[L - 1], p2[L - 1], s)]
    f1, f2 = features(p1, X), features(p2, X)
    W2_l = p2[l][ot_permutation(A[l], p2[l])] if use_ot else p2[l]
    W_l = connect(A[l], W2_l, s)
    g = relu(f2[l] @ W_l.T)
    W_next = adjust(p1[l + 1], f1[l + 1], g)
    return list(p2[:l]) + [W_l, W_next] + list(p1[l + 2:])


def step_wise_inverse(p1, p2, X, t, connect):
    """PointFinderStepWiseInverse: move layer l from A_l to W_l^2 and re-fit layer l+1; last segment connects A_{L-1} to W_{L-1}^2 (METHODS.md, Table 2)."""
    return _step_wise_inverse_path(p1, p2, X, t, connect, use_ot=False)


def step_wise_inverse_ot(p1, p2, X, t, connect):
    """PointFinderStepWiseInverseOT: as StepWiseInverse, rows of W_l^2 OT-matched to rows of A_l in non-last segments (METHODS.md, Table 2)."""
    return _step_wise_inverse_path(p1, p2, X, t, connect, use_ot=True)


FINDERS = {
    'PointFinderWithBias': with_bias,
    'PointFinderTransportation': transportation,
    'PointFinderInverseWithBias': inverse_with_bias,
    'PointFinderInverseWithBiasOT': inverse_with_bias_ot,
    'PointFinderSimultaneous': simultaneous,
    'PointFinderStepWiseButterfly': step_wise_butterfly,
    'PointFinderStepWiseInverse': step_wise_inverse,
    'PointFinderStepWiseTransportation': step_wise_transportation,
    'PointFinderStepWiseInverseOT': step_wise_inverse_ot,
}


def end_time(name, L):
    """End time of finder `name` for a net with L weight matrices (METHODS.md, Table 1 / Table 2 end_time columns)."""
    return {
        'PointFinderWithBias': 1,
        'PointFinderTransportation': 1,
        'PointFinderInverseWithBias': 2,
        'PointFinderInverseWithBiasOT': 2,
        'PointFinderSimultaneous': 1,
        'PointFinderStepWiseButterfly': L - 1,
        'PointFinderStepWiseInverse': L,
        'PointFinderStepWiseTransportation': L - 1,
        'PointFinderStepWiseInverseOT': L,
    }[name]
