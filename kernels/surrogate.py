"""Surrogate derivatives dS/dM for the Triton kernels; the torch twin is ``revsnn/surrogate.py``."""
import triton
import triton.language as tl


@triton.jit
def surrogate_grad(z, alpha, KIND: tl.constexpr):
    """KIND 0: sigmoid, alpha*sig(alpha z)*(1 - sig(alpha z)); KIND 1: atan,
    alpha/2 / (1 + (pi/2 alpha z)^2) (SpikingJelly's formulas and defaults); KIND 2:
    fast_sigmoid, 1 / (1 + alpha |z|)^2 (snnTorch's, Norse's SuperSpike)."""
    if KIND == 0:
        s = tl.sigmoid(alpha * z)
        g = alpha * s * (1 - s)
    elif KIND == 1:
        t = (1.5707963267948966 * alpha) * z
        g = (alpha * 0.5) / (1 + t * t)
    else:
        d = 1 + alpha * tl.abs(z)
        g = 1 / (d * d)
    return g
