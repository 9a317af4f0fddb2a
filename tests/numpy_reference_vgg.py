"""Independent float64 NumPy transcription of docs/METHODS.md, section "VGG16" (with the "Feature maps" and
"Butterfly" building blocks and the Table-2 step-wise schemes), used as a test oracle for the VGG16 point finders.

Parameters of a VGG16 are the 32 arrays [W0, b0, ..., W15, b15]: layers 0..12 are 3x3 convolutions (padding 1,
stride 1, PyTorch cross-correlation) each followed by ReLU, a 2x2 max-pool after layers 1, 3, 6, 9, 12 (then the
512x1x1 map is flattened), layers 13 and 14 dense + ReLU, layer 15 dense logits (dropout = identity).

Every finder takes the full training matrix X and uses only the even-indexed images X[0::2] for its feature maps
(METHODS.md, Feature maps). The connector is passed in, e.g. numpy_reference.lin_connect / arc_connect.
"""

import numpy as np
from scipy.optimize import linear_sum_assignment

import numpy_reference as ref
from numpy_reference import arc_connect, lin_connect  # noqa: F401  (re-exported for convenience)

N_LAYERS = 16
N_CONV = 13
POOL_AFTER = (1, 3, 6, 9, 12)
CONV_OUT_CHANNELS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def relu(A):
    """max(A, 0) (METHODS.md, Notation)."""
    return np.maximum(A, 0.0)


def conv2d(x, W, b):
    """3x3 cross-correlation, padding 1, stride 1: out[n,o,y,x] = b[o] + sum_{c,i,j} W[o,c,i,j] xp[n,c,y+i,x+j]."""
    x, W, b = _f64(x), _f64(W), _f64(b)
    n, C, H, Wd = x.shape
    out_ch, in_ch, kh, kw = W.shape
    assert in_ch == C and kh == 3 and kw == 3
    xp = np.zeros((n, C, H + 2, Wd + 2))
    xp[:, :, 1:H + 1, 1:Wd + 1] = x
    out = np.zeros((n, out_ch, H, Wd))
    for i in range(3):
        for j in range(3):
            window = xp[:, :, i:i + H, j:j + Wd]                      # (n, C, H, W): in_padded[c, y+i, x+j]
            out += np.tensordot(window, W[:, :, i, j], axes=([1], [1])).transpose(0, 3, 1, 2)
    return out + b[None, :, None, None]


def maxpool2(x):
    """2x2 max-pool, stride 2, on (n, C, H, W) with even H, W."""
    n, C, H, Wd = x.shape
    return x.reshape(n, C, H // 2, 2, Wd // 2, 2).max(axis=(3, 5))


def apply_layer(k, W, b, h):
    """Apply layer k (weights W, bias b) to its input h; returns the input of layer k+1 (logits for k = 15)."""
    if k < N_CONV:
        h = relu(conv2d(h, W, b))
        if k in POOL_AFTER:
            h = maxpool2(h)
        if k == N_CONV - 1:
            h = h.reshape(h.shape[0], -1)
        return h
    h = _f64(h) @ _f64(W).T + _f64(b)
    return h if k == N_LAYERS - 1 else relu(h)


def layer_inputs(params, X):
    """[input of layer 0 (= X), input of layer 1, ..., input of layer 15, logits] in one pass."""
    assert len(params) == 2 * N_LAYERS
    hs = [_f64(X)]
    for k in range(N_LAYERS):
        hs.append(apply_layer(k, params[2 * k], params[2 * k + 1], hs[-1]))
    return hs


def forward(params, X, N=None):
    """Logits of the VGG16 `params` on X, or (N given, 0 <= N <= 15) the input of layer N (N = 0: X itself)."""
    assert len(params) == 2 * N_LAYERS
    stop = N_LAYERS if N is None else N
    h = _f64(X)
    for k in range(stop):
        h = apply_layer(k, params[2 * k], params[2 * k + 1], h)
    return h


def patch_features(inputs):
    """Feature matrix of a layer input (METHODS.md, Feature maps).

    4-D (n, C, H, W): zero-pad by 1, 3x3 patches at positions 0, s, 2s, ... (s = max(W // 2, 1), both directions)
    while the patch fits, each flattened in (C, 3, 3) order; rows image by image, then row position, then column.
    2-D (n, d): the input itself.
    """
    inputs = _f64(inputs)
    if inputs.ndim == 2:
        return inputs
    n, C, H, Wd = inputs.shape
    stride = max(Wd // 2, 1)
    xp = np.zeros((n, C, H + 2, Wd + 2))
    xp[:, :, 1:H + 1, 1:Wd + 1] = inputs
    rows = []
    for img in range(n):
        py = 0
        while py + 3 <= H + 2:
            px = 0
            while px + 3 <= Wd + 2:
                rows.append(xp[img, :, py:py + 3, px:px + 3].reshape(-1))
                px += stride
            py += stride
    return np.array(rows).reshape(len(rows), C * 9)


def _adjust_layer(W, F_target, F_source):
    """ref.adjust on W viewed as (out, -1) (a conv kernel as (out, C*9)), reshaped back to W's shape."""
    W = _f64(W)
    return ref.adjust(W.reshape(W.shape[0], -1), F_target, F_source).reshape(W.shape)


def _even(X):
    return _f64(X)[0::2]


def _features(params, X_even, i):
    """feat_i: the feature matrix of the input of layer i on X_even."""
    return patch_features(forward(params, X_even, N=i))


def adjusted(p1, p2, X, wa_head=False):
    """A_0 = W0^1, A_i = adjust(W_i^1, feat^1_i, feat^2_i) (i = 1..14), A_15 = W15^2 (B-fly) or, with wa_head,
    adjust(W15^1, feat^1_15, feat^2_15) (WA variants). Features on X[0::2]."""
    Xe = _even(X)
    h1, h2 = layer_inputs(p1, Xe), layer_inputs(p2, Xe)   # h[i] == forward(params, Xe, N=i)
    A = [_f64(p1[0])]
    last = N_LAYERS if wa_head else N_LAYERS - 1
    for i in range(1, last):
        A.append(_adjust_layer(p1[2 * i], patch_features(h1[i]), patch_features(h2[i])))
    if not wa_head:
        A.append(_f64(p2[2 * (N_LAYERS - 1)]))
    return A


def ot_permutation(A, B):
    """Same as ref.ot_permutation (B[perm] aligned to A; exact assignment on max-normalised squared distances,
    METHODS.md, OT matching), but the cost matrix is built row by row so that 512 samples of ~9000 values do not
    need an (n, n, d) temporary."""
    A, B = _f64(A), _f64(B)
    C = np.empty((A.shape[0], B.shape[0]))
    for i in range(A.shape[0]):
        C[i] = ((A[i][None, :] - B) ** 2).sum(axis=1)
    C = C / C.max()
    _, perm = linear_sum_assignment(C)
    return perm


def _segment(t, n_segments):
    """l = floor(t), s = t - l; t >= n_segments -> (n_segments - 1, 1). Interior integer t uses the later segment."""
    if t >= n_segments:
        return n_segments - 1, 1.0
    l = int(np.floor(t))
    return l, float(t - l)


def _swap(W):
    return np.swapaxes(_f64(W), 0, 1)


def _butterfly_path(p1, p2, X, t, connect, use_ot):
    p1 = [_f64(p) for p in p1]
    p2 = [_f64(p) for p in p2]
    A = adjusted(p1, p2, X, wa_head=False)
    l, s = _segment(t, N_LAYERS - 1)
    W2_l, b2_l, A_next = p2[2 * l], p2[2 * l + 1], A[l + 1]
    if use_ot:
        out = W2_l.shape[0]
        side1 = np.hstack([A[l].reshape(out, -1), p1[2 * l + 1][:, None], _swap(p1[2 * l + 2]).reshape(out, -1)])
        side2 = np.hstack([W2_l.reshape(out, -1), b2_l[:, None], _swap(A_next).reshape(out, -1)])
        perm = ot_permutation(side1, side2)
        W2_l, b2_l, A_next = W2_l[perm], b2_l[perm], np.swapaxes(_swap(A_next)[perm], 0, 1)
    W_l = connect(A[l], W2_l, s)
    b_l = connect(p1[2 * l + 1], b2_l, s)
    W_next = np.swapaxes(connect(_swap(p1[2 * l + 2]), _swap(A_next), s), 0, 1)
    if l == N_LAYERS - 2:
        b_next = connect(p1[2 * l + 3], p2[2 * l + 3], s)  # quirk fix 1: the output bias moves in the last segment
    else:
        b_next = p1[2 * l + 3]
    return p2[:2 * l] + [W_l, b_l, W_next, b_next] + p1[2 * l + 4:]


def conv_butterfly(p1, p2, X, t, connect):
    """PointFinderStepWiseButterflyConvWBias (Linear/Arc + B-fly), end time 15 (METHODS.md, VGG16)."""
    return _butterfly_path(p1, p2, X, t, connect, use_ot=False)


def conv_butterfly_ot(p1, p2, X, t, connect):
    """PointFinderStepWiseButterflyConvWBiasOT (OT + B-fly), end time 15: butterflies [W_l, b_l, swap(W_{l+1})]
    OT-matched in each segment, model 2's side permuted, then connected as in conv_butterfly (METHODS.md, VGG16)."""
    return _butterfly_path(p1, p2, X, t, connect, use_ot=True)


def _wa_path(p1, p2, X, t, connect, use_ot):
    p1 = [_f64(p) for p in p1]
    p2 = [_f64(p) for p in p2]
    A = adjusted(p1, p2, X, wa_head=True)
    l, s = _segment(t, N_LAYERS)
    if l == N_LAYERS - 1:  # quirk fix 2: final segment connects the re-fitted head to model 2's last layer
        return p2[:2 * l] + [connect(A[l], p2[2 * l], s), connect(p1[2 * l + 1], p2[2 * l + 1], s)]
    W2_l, b2_l = p2[2 * l], p2[2 * l + 1]
    if use_ot:
        out = W2_l.shape[0]
        perm = ot_permutation(np.hstack([A[l].reshape(out, -1), p1[2 * l + 1][:, None]]),
                                  np.hstack([W2_l.reshape(out, -1), b2_l[:, None]]))
        W2_l, b2_l = W2_l[perm], b2_l[perm]
    W_l = connect(A[l], W2_l, s)
    b_l = connect(p1[2 * l + 1], b2_l, s)
    Xe = _even(X)
    g = apply_layer(l, W_l, b_l, forward(p2, Xe, N=l))          # input of layer l+1 of the partly moved net
    W_next = _adjust_layer(p1[2 * l + 2], _features(p1, Xe, l + 1), patch_features(g))
    return p2[:2 * l] + [W_l, b_l, W_next, p1[2 * l + 3]] + p1[2 * l + 4:]


def conv_wa(p1, p2, X, t, connect):
    """PointFinderStepWiseButterflyConvWBiasWA (Linear/Arc + WA), end time 16 (METHODS.md, VGG16, quirk fix 2)."""
    return _wa_path(p1, p2, X, t, connect, use_ot=False)


def conv_ot_wa(p1, p2, X, t, connect):
    """PointFinderStepWiseButterflyConvWBiasOTWA (OT + WA), end time 16: rows [W_l, b_l] of model 2 OT-matched to
    [A_l, b_l^1] in every non-last segment, then as conv_wa (METHODS.md, VGG16)."""
    return _wa_path(p1, p2, X, t, connect, use_ot=True)


FINDERS = {
    'PointFinderStepWiseButterflyConvWBias': conv_butterfly,
    'PointFinderStepWiseButterflyConvWBiasOT': conv_butterfly_ot,
    'PointFinderStepWiseButterflyConvWBiasWA': conv_wa,
    'PointFinderStepWiseButterflyConvWBiasOTWA': conv_ot_wa,
}

END_TIME = {
    'PointFinderStepWiseButterflyConvWBias': 15,
    'PointFinderStepWiseButterflyConvWBiasOT': 15,
    'PointFinderStepWiseButterflyConvWBiasWA': 16,
    'PointFinderStepWiseButterflyConvWBiasOTWA': 16,
}
