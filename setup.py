"""Builds apnt._C: a CppExtension, or a CUDAExtension when nvcc and a CUDA build of torch are present.

Knobs (environment variables):
  APNT_CUDA=auto|0|1       build the CUDA sources (auto: when nvcc and a CUDA torch are found)
  TORCH_CUDA_ARCH_LIST     default "7.5;8.0;8.6;8.9;9.0+PTX" (CI uses "8.0;9.0")
  MAX_JOBS                 parallel compile jobs (ninja)
  APNT_DEBUG=1             -O0 -g, no NDEBUG
  APNT_SANITIZE=1          AddressSanitizer + UBSan on the C++ sources (CPU only)
"""
import glob
import importlib.util
import os
import shutil
import sys

from setuptools import find_packages, setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "7.5;8.0;8.6;8.9;9.0+PTX"


def _cuda_home():
    """The toolkit root whose bin/nvcc is the real compiler.

    `nvcc` on PATH may be a wrapper script (`exec /opt/cuda/bin/nvcc "$@"`); torch would then take its
    parent folder as CUDA_HOME and the link fails with `cannot find -lcudart`. Follow the wrapper."""
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env and os.path.exists(os.path.join(env, "bin", "nvcc")):
        return env
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc = os.path.realpath(nvcc)
    try:
        with open(nvcc, "rb") as f:
            head = f.read(4096)
    except OSError:
        head = b""
    if head.startswith(b"#!"):
        for token in head.decode(errors="ignore").split():
            if token.endswith("/nvcc") and os.path.isfile(token):
                nvcc = os.path.realpath(token)
                break
    root = os.path.dirname(os.path.dirname(nvcc))
    return root if os.path.isdir(os.path.join(root, "include")) else None


def _nvidia_include_dirs():
    """Include folders of the `nvidia` pip packages (cuBLAS/cuSPARSE headers that ATen's CUDA headers need)."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    dirs = []
    for base in spec.submodule_search_locations:
        dirs += sorted(glob.glob(os.path.join(base, "*", "include")))
    return dirs


def _want_cuda():
    mode = os.environ.get("APNT_CUDA", "auto").lower()
    if mode in ("0", "off", "false", "no"):
        return False, None
    home = _cuda_home()
    available = home is not None and torch.version.cuda is not None
    if mode in ("1", "on", "true", "yes") and not available:
        sys.exit("APNT_CUDA=1 but no nvcc or no CUDA build of torch was found "
                 f"(nvcc toolkit: {home}, torch.version.cuda: {torch.version.cuda})")
    return available, home


def extension():
    use_cuda, cuda_home = _want_cuda()
    debug = os.environ.get("APNT_DEBUG") == "1"
    sanitize = os.environ.get("APNT_SANITIZE") == "1"
    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cxx = ["-std=c++20", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fopenmp"]
    cxx += ["-O0", "-g"] if debug else ["-O3", "-DNDEBUG"]
    link = ["-fopenmp"]
    if sanitize:
        cxx += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
        link += ["-fsanitize=address,undefined"]
    macros = [("APNT_SANITIZE", "1")] if sanitize else []  # e.g. no target_clones ifuncs (common/cpu_clones.h)
    include_dirs = [os.path.join(ROOT, "csrc")]
    if use_cuda:
        # torch reads CUDA_HOME at import of cpp_extension: point it (and the module global) at the real toolkit.
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
        sources += sorted(glob.glob("csrc/**/*.cu", recursive=True))
        include_dirs += _nvidia_include_dirs()
        macros.append(("APNT_WITH_CUDA", "1"))
        nvcc = ["-std=c++20", "--expt-relaxed-constexpr", "-Xcompiler=-Wall",
                "-Xcompiler=-Wno-unused-parameter", "--threads=2"]
        nvcc += ["-O0", "-g", "-G"] if debug else ["-O3", "-DNDEBUG"]
        return cpp_extension.CUDAExtension(
            "apnt._C", sources, include_dirs=include_dirs, define_macros=macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)
    return cpp_extension.CppExtension(
        "apnt._C", sources, include_dirs=include_dirs, define_macros=macros,
        extra_compile_args={"cxx": cxx}, extra_link_args=link)


setup(
    packages=find_packages(include=["apnt", "apnt.*"]) + ["apnt.kernels"],
    package_dir={"apnt.kernels": "kernels"},
    package_data={"apnt": ["models/weights/*", "data/assets/*"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
