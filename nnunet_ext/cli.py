"""``nnunet-ext``: the plugin's command-line tool.

nnU-Net's own commands do the work (``nnUNetv2_plan_and_preprocess``, ``nnUNetv2_train``,
``nnUNetv2_predict``); this tool connects them to the plugin and adds what nnU-Net lacks.
"""
from __future__ import annotations

import argparse
import sys

EPILOG = """\
getting started:
  export nnUNet_extTrainer="$(nnunet-ext trainers-path)"   # let nnU-Net find our trainers
  nnunet-ext trainers                                      # list them
  nnUNetv2_train DATASET 3d_fullres 0 -tr nnUNetTrainerFD  # train one, as any nnU-Net trainer
  nnunet-ext demo                                          # stock vs. FD on a phantom, < 10 min on CPU
"""


#: modules that add verbs to ``nnunet-ext`` through ``register(subparsers)`` (imported at start: keep them light)
TOOL_MODULES = ("nnunet_ext.evaluation.cli", "nnunet_ext.robustness.cli", "nnunet_ext.benchmark.cli",
                "nnunet_ext.unlabeled.cli", "nnunet_ext.s2s2.cli", "nnunet_ext.gms.cli",
                "nnunet_ext.stego.cli", "nnunet_ext.stego.crf_cli", "nnunet_ext.flare22.cli")


def _trainer_classes():
    """(name, first docstring line) of every trainer in our trainers folder, without nnU-Net's import dance."""
    import importlib.util
    import inspect
    import os
    import pkgutil

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ext.paths import trainers_path

    folder = trainers_path()
    found = {}
    for mod in pkgutil.iter_modules([folder]):
        spec = importlib.util.spec_from_file_location(f"_nnunet_ext_list_{mod.name}", os.path.join(folder, mod.name + ".py"))
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        for name, obj in vars(m).items():
            if inspect.isclass(obj) and issubclass(obj, nnUNetTrainer) and name.startswith("nnUNetTrainer") \
                    and obj is not nnUNetTrainer:
                doc = (inspect.getdoc(obj) or "").splitlines()
                found[name] = (mod.name, doc[0] if doc else "")
    return found


def cmd_trainers_path(args) -> int:
    from nnunet_ext.paths import trainers_path
    print(trainers_path())
    return 0


def cmd_trainers(args) -> int:
    from nnunet_ext.paths import ext_trainer_status
    for name, (module, doc) in sorted(_trainer_classes().items()):
        print(f"{name:34s} {doc}")
    print()
    print(ext_trainer_status())
    return 0


def cmd_demo(args) -> int:
    from nnunet_ext.demo.run import run_demo
    run_demo(args)
    return 0


def cmd_convert(args) -> int:
    from nnunet_ext.conversion import CONVERTERS
    folder = CONVERTERS[args.converter].run(args)
    print(f"wrote {folder}")
    return 0


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line, ``nnunet-ext <verb>: error: <message>`` (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="nnunet-ext", description=__doc__.replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an expected error (or set NNUNET_EXT_DEBUG=1)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("trainers-path", help="print the folder to put on nnUNet_extTrainer")
    s.set_defaults(func=cmd_trainers_path)

    s = sub.add_parser("trainers", help="list nnunet_ext's trainers and check nnUNet_extTrainer")
    s.set_defaults(func=cmd_trainers)

    from nnunet_ext.demo.run import add_demo_arguments
    s = sub.add_parser("demo", help="plan, train stock nnU-Net and our trainers on a phantom, predict, report",
                       description="Runs the whole nnU-Net pipeline on a small synthetic hippocampus-like MRI "
                                   "phantom: nnUNetv2_plan_and_preprocess, nnUNetv2_train (stock nnUNetTrainer and "
                                   "nnunet_ext trainers with the same short budget), nnUNetv2_predict on held-out "
                                   "cases; prints Dice per class and train time, writes report.md with overlay PNGs.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_demo_arguments(s)
    s.set_defaults(func=cmd_demo)

    try:
        from nnunet_ext.conversion import CONVERTERS
    except ImportError:  # conversion package not available
        CONVERTERS = {}
    s = sub.add_parser("convert", help="convert a published dataset layout to an nnU-Net raw dataset",
                       description="Convert a dataset from the layout a method published it in to nnU-Net's raw "
                                   "format (DatasetXXX_Name under $nnUNet_raw). The source is never modified.")
    csub = s.add_subparsers(dest="converter", metavar="DATASET", required=True)
    for name, conv in CONVERTERS.items():
        c = csub.add_parser(name, help=conv.help, description=conv.help)
        conv.add_arguments(c)
    s.set_defaults(func=cmd_convert)

    # the measuring instruments: each package registers its own verbs (``register(subparsers)``)
    import importlib
    for module in TOOL_MODULES:
        importlib.import_module(module).register(sub)
    return p


def expected_errors() -> tuple:
    """Exception types that are expected failures: printed as one line, no traceback."""
    from nnunet_ext.errors import UserError
    types = [UserError]
    try:
        from nnunet_ext.conversion.errors import SourceLayoutError, TargetExistsError
        types += [SourceLayoutError, TargetExistsError]
    except ImportError:
        pass
    return tuple(types)


def main(argv=None) -> int:
    from nnunet_ext.errors import debug_enabled

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    verb = " ".join(v for v in (args.command, getattr(args, "converter", None)) if v)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except expected_errors() as e:
        if args.debug or debug_enabled():
            raise
        print(f"nnunet-ext {verb}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
