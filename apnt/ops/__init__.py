"""The public op layer: `from apnt.ops import conv2d, attention_gate, ...` (DESIGN §1, §3)."""
from apnt.ops._backends import BACKENDS, BackendUnavailableError
from apnt.ops._native import empty_cache, hold_workspaces, workspace_cache_bytes
from apnt.ops.attention import attention_blend, attention_gate, attention_gate_map
from apnt.ops.conv import conv2d
from apnt.ops.dense import dilated_dense_block
from apnt.ops.match import patch_match, patch_transfer

__all__ = ["BACKENDS", "BackendUnavailableError", "attention_blend", "attention_gate", "attention_gate_map",
           "conv2d", "dilated_dense_block", "empty_cache", "hold_workspaces", "patch_match", "patch_transfer",
           "workspace_cache_bytes"]
