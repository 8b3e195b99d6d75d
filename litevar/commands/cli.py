"""The `litevar` command line. Each subcommand lives in its own module, which provides
`add_arguments(parser)` and `run(args) -> int`; this file only wires them up."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from litevar.commands.args import Parser
from litevar.commands.results import own_version
from litevar.models.core.errors import UserError

# subcommand -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("litevar.commands.generate", "generate a PNG grid of class-conditional samples"),
    "train": ("litevar.commands.train", "train the small default VQVAE + VAR (and classifier) from scratch"),
    "eval": ("litevar.commands.eval", "quality metrics of a model on N generated images"),
    "profile": ("litevar.commands.profile",
                "measure sensitivity, window coverage, CFG redundancy and cost on this device"),
    "plan": ("litevar.commands.plan", "solve for the least-loss compression plan within latency / memory budgets"),
    "explain": ("litevar.commands.explain",
                "what each choice of a plan saves, costs in loss, and the alternative it beat"),
    "bench": ("litevar.commands.bench", "time the dense model and plans end to end, against the plans' predictions"),
    "compare": ("litevar.commands.compare", "set plans side by side across devices, resolutions and budgets; "
                "--html writes a self-contained report"),
    "bench-kernels": ("litevar.commands.bench_kernels", "time every kernel against its dense reference at VAR shapes"),
    "devices": ("litevar.commands.devices", "the GPUs plans can be priced for on paper, and what runs on each"),
    "calibrate": ("litevar.commands.calibrate", "describe this device by a short microbenchmark sweep, for plans "
                  "priced at the calibrated tier"),
    "ablate": ("litevar.commands.ablate", "re-run the LiteVAR paper's Tables 1-3 (MDWA thresholds, bit-widths, "
               "MDWA+ASC+quant) on a model"),
}
DISTRIBUTED = ("profile", "eval", "ablate")  # commands that share their work across torchrun's processes


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="litevar", description="Hardware-aware compression planner and runtime "
                                     "for visual autoregressive (VAR) image models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument("--version", action="version", version=f"litevar {own_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        _import(module).add_arguments(p)
    return parser


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:  # a command whose optional dependency is missing
        raise SystemExit(f"litevar: cannot load {module}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args._argv = ["litevar", *argv]  # the command as typed, for result files
    args._dtype_given = getattr(args, "dtype", None) is not None
    if getattr(args, "dtype", "") is None:  # commands that run a model: the device's default dtype
        from litevar.commands.common import default_dtype
        args.dtype = default_dtype(args.device)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from litevar.models.core import distributed
    from litevar.models.core.host_memory import retain_freed_memory
    retain_freed_memory()  # before any model is built: every timing of this process under one policy
    try:
        if distributed.launched():
            if args.command not in DISTRIBUTED:
                raise UserError(f"`litevar {args.command}` runs as one process; of the commands only "
                                f"{', '.join(DISTRIBUTED)} run under torchrun")
            distributed.init(args.device)
        with _quiet_unless_main():
            return int(_import(args._module).run(args) or 0)
    except UserError as e:
        print(f"litevar {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()


def _quiet_unless_main():
    """Under torchrun only rank 0 prints (errors still go to every rank's stderr)."""
    import contextlib
    import os

    from litevar.models.core.distributed import world
    if world().main:
        return contextlib.nullcontext()
    return contextlib.redirect_stdout(open(os.devnull, "w"))  # noqa: SIM115 - closed with the process


if __name__ == "__main__":
    sys.exit(main())
