"""apnt: attention-guided ghost-free HDR imaging (AHDRNet, APNT-Fusion) with fused C++/CUDA and Triton kernels."""
__version__ = "0.1.0"


def _map_source_tree_kernels() -> None:
    """Make `apnt.kernels` resolve in a source checkout run with PYTHONPATH=. (no install).

    setup.py installs kernels/ as apnt.kernels (package_dir); installed and editable builds find it on their
    own. In a bare checkout, register kernels/ under that name (its __init__ is only a docstring: triton
    is imported when an op first runs a kernel, not here)."""
    import importlib.util
    import os
    import sys

    if importlib.util.find_spec("apnt.kernels") is not None:
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    init = os.path.join(root, "kernels", "__init__.py")
    if not (os.path.isfile(init) and os.path.isfile(os.path.join(root, "setup.py"))):
        return
    spec = importlib.util.spec_from_file_location("apnt.kernels", init,
                                                  submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["apnt.kernels"] = module
    spec.loader.exec_module(module)
    globals()["kernels"] = module


_map_source_tree_kernels()

from apnt import ops  # noqa: E402,F401  (registers every op)


def __getattr__(name: str):
    # `apnt.fuse` / `apnt.explain` without importing the pipeline (OpenCV, tifffile, ...) for users of the ops only.
    if name in ("fuse", "explain"):
        from apnt import infer
        return getattr(infer, name)
    raise AttributeError(f"module 'apnt' has no attribute {name!r}")
