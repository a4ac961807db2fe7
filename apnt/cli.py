"""The `apnt` command line (also `python -m apnt`)."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import warnings


def _cmd_info(args) -> int:
    import torch

    import apnt
    from apnt.ops import _backends, _native

    print(f"apnt {apnt.__version__}  torch {torch.__version__}  python {platform.python_version()}")
    try:
        import triton
        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton: not installed")
    print(f"torch CUDA build: {torch.version.cuda or 'no'};  CUDA devices: {torch.cuda.device_count()}")
    err = _native.load_error()
    print("apnt._C: " + ("built" + (" with CUDA" if _native.built_with_cuda() else " (CPU only)") if err is None
                         else f"not available: {err}"))
    print(f"threads: {torch.get_num_threads()}")
    if err is None:
        print(f"CPU Winograd GEMM: {_native.winograd_gemm_engine()}  (APNT_WINOGRAD_GEMM=aten selects at::bmm)")
    env = os.environ.get("APNT_BACKEND")
    if env:
        _backends._requested(env)  # raises a ValueError naming the setting when it is not a backend
        print(f"APNT_BACKEND={env} replaces backend='auto' in every op")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        print(f"\nbackends on {device} (float32):")
        for name, why in _backends.availability(torch.device(device)).items():
            print(f"  {name:<10} " + ("usable" if not why else "not usable: " + "; ".join(why)))
    return 0


def _cmd_selftest(args) -> int:
    from apnt import selftest
    return 0 if selftest.run() else 1


def _cmd_bench(args) -> int:
    from apnt import benchcases
    return benchcases.run_cli(quick=args.quick, families=args.family)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="apnt", description="Attention-guided ghost-free HDR imaging.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, and which backends are built and usable here (and why not)") \
        .set_defaults(fn=_cmd_info)
    sub.add_parser("selftest", help="every op x backend on this machine's devices against reference") \
        .set_defaults(fn=_cmd_selftest)
    b = sub.add_parser("bench", help="run the benchmark cases side by side and print the table")
    b.add_argument("--quick", action="store_true", help="fewer repetitions, smaller set")
    b.add_argument("--family", metavar="F,...", help="only these case families (attention, conv, dense, models)")
    b.set_defaults(fn=_cmd_bench)
    # Pipeline commands register themselves (each module owns its options).
    from apnt import demo, evaluate, infer_cli, train
    from apnt.data import synth
    for module in (demo, synth, train, evaluate, infer_cli):
        module.add_cli(sub)
    for command in sub.choices.values():  # every command takes --debug (fuse registers its own)
        try:
            command.add_argument("--debug", action="store_true", help="show the traceback of an error")
        except argparse.ArgumentError:
            pass
    return p


def _one_line_warnings(command: str, show):
    """A warnings.showwarning that prints apnt's InputWarnings like its errors, `apnt <command>: warning: ...`
    (Python's format adds the warning's source line); other warnings keep Python's format."""
    from apnt.data.io import InputWarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, InputWarning):
            return show(message, category, filename, lineno, file, line)
        print(f"apnt {command}: warning: {str(message).splitlines()[0]}", file=file or sys.stderr)
    return showwarning


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():  # restores showwarning afterwards (main may run inside another program)
        warnings.showwarning = _one_line_warnings(args.command, warnings.showwarning)
        try:
            return args.fn(args)
        except (ValueError, TypeError, OSError) as e:  # bad settings, arguments or files: one line
            if getattr(args, "debug", False):
                raise
            print(f"apnt {args.command}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                  file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"apnt {args.command}: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
