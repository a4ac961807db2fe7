"""Triton kernels, one module per op family; installed as `apnt.kernels` (setup.py package_dir).

These modules know nothing of torch.library: `apnt.ops.<family>` registers the `apnt_triton::` custom ops
and imports the module here only when an op runs, so importing apnt never imports triton."""
