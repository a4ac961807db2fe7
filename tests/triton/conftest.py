"""Tests of the Triton backend. They run only under the interpreter on CPU tensors (DESIGN §2):

    TRITON_INTERPRET=1 python -m pytest -q tests/triton

Without it every test here is skipped (the normal suite compiles the kernels ahead of time instead, in
tests/test_triton_aot.py). Comparisons, tolerances and layouts come from tests/conftest.py (apnt_test_helpers).
"""
import os
import pathlib

import pytest

HERE = pathlib.Path(__file__).parent
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def pytest_collection_modifyitems(config, items):
    if INTERPRET:
        return
    skip = pytest.mark.skip(reason="Triton kernels run on CPU only under TRITON_INTERPRET=1")
    for item in items:  # this hook sees the whole session: mark only the tests of this folder
        if HERE in item.path.parents:
            item.add_marker(skip)


if INTERPRET:
    # The ops import apnt.kernels lazily; fail here, once and clearly, if it does not resolve (source tree:
    # apnt/__init__.py maps kernels/ to apnt.kernels; installed builds map it through package_dir).
    import apnt.kernels.attention  # noqa: F401
    import apnt.kernels.conv  # noqa: F401
