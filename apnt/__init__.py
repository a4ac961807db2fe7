"""apnt: attention-guided ghost-free HDR imaging (AHDRNet, APNT-Fusion) with fused C++/CUDA and Triton kernels."""
__version__ = "0.1.0"

from apnt import ops  # noqa: F401  (registers every op)
