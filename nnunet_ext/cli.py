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
  nnunet-ext trainers NAME                                 # will nnU-Net find NAME? (else: the closest names)
  nnUNetv2_train DATASET 3d_fullres 0 -tr nnUNetTrainerFD  # train one, as any nnU-Net trainer
  nnunet-ext demo                                          # stock vs. FD on a phantom, < 10 min on CPU
"""


#: modules that add verbs to ``nnunet-ext`` through ``register(subparsers)`` (imported at start: keep them light)
TOOL_MODULES = ("nnunet_ext.evaluation.cli", "nnunet_ext.robustness.cli", "nnunet_ext.benchmark.cli",
                "nnunet_ext.unlabeled.cli", "nnunet_ext.cps.cli", "nnunet_ext.s2s2.cli", "nnunet_ext.gms.cli",
                "nnunet_ext.stego.cli", "nnunet_ext.flare22.cli")


def _trainer_classes():
    """(name, description) of every trainer in our trainers folder, without nnU-Net's import dance."""
    import importlib.util
    import inspect
    import os
    import pkgutil

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ext.paths import trainers_path

    folder = trainers_path()
    found = {}
    for mod in pkgutil.iter_modules([folder]):
        spec = importlib.util.spec_from_file_location(f"_nnunet_ext_list_{mod.name}",
                                                      os.path.join(folder, mod.name + ".py"))
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        for name, obj in vars(m).items():
            if inspect.isclass(obj) and issubclass(obj, nnUNetTrainer) and name.startswith("nnUNetTrainer") \
                    and obj is not nnUNetTrainer:
                found.setdefault(name, (mod.name, describe(obj)))
    return found


def describe(cls) -> str:
    """The first paragraph of a class's docstring, on one line (a sentence is never cut)."""
    import inspect

    paragraph = (inspect.getdoc(cls) or "").strip().split("\n\n")[0]
    return " ".join(paragraph.split())


def cmd_trainers_path(args) -> int:
    from nnunet_ext.paths import trainers_path
    print(trainers_path())
    return 0


def cmd_trainers(args) -> int:
    from nnunet_ext.errors import UserError
    from nnunet_ext.paths import ext_trainer_check

    if args.name:
        return check_trainer_name(args.name)
    for name, (module, doc) in sorted(_trainer_classes().items()):
        print(f"{name:34s} {doc}")
    print()
    ok, line = ext_trainer_check()
    if not ok:
        raise UserError(line)
    print(line)
    return 0


def check_trainer_name(name: str) -> int:
    """Say whether ``nnUNetv2_train -tr NAME`` finds ``name`` (nnU-Net's search, with this environment's
    ``nnUNet_extTrainer``); where it does not, why, and the closest names (a ``UserError``: one line, exit 2)."""
    import os

    from nnunet_ext.errors import UserError
    from nnunet_ext.paths import class_file, ext_trainer_check, ext_trainer_folders, find_trainer_class, \
        trainer_files, trainers_path

    folders = ext_trainer_folders()
    ours = {n: os.path.join(trainers_path(), module + ".py") for n, (module, _) in _trainer_classes().items()}
    cls = find_trainer_class(name)
    if cls is not None:
        print(f"{name}: nnU-Net finds it ({class_file(cls) or cls.__module__})")
        if describe(cls):
            print(f"  {describe(cls)}")
        return 0
    ok, line = ext_trainer_check()
    if name in ours:  # ours, but our folder is not on nnUNet_extTrainer
        raise UserError(f"nnU-Net will not find {name} ({ours[name]}): {line}")
    close = closest_names(name, {**trainer_files(folders, nnunet=True), **ours})
    searched = f"nnUNet_extTrainer={os.pathsep.join(folders)}" if folders else "nnUNet_extTrainer is not set"
    raise UserError(f"nnU-Net will not find {name} (searched nnU-Net's trainers; {searched}); "
                    + (f"closest names: {', '.join(close)}" if close else
                       "no trainer has a similar name (nnunet-ext trainers lists nnunet_ext's)"))


def closest_names(name: str, names, n: int = 5) -> list:
    """Up to ``n`` of ``names`` closest to ``name``, compared without the prefix ``nnUNetTrainer`` that they share."""
    import difflib

    prefix = "nnUNetTrainer"
    rest = {c[len(prefix):] if c.startswith(prefix) else c: c for c in sorted(names)}
    key = name[len(prefix):] if name.startswith(prefix) else name
    return [rest[r] for r in difflib.get_close_matches(key, list(rest), n=n, cutoff=0.5)]


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
                   help="show the full traceback of an expected error (or set nnUNet_ext_debug=1)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("trainers-path", help="print the folder to put on nnUNet_extTrainer")
    s.set_defaults(func=cmd_trainers_path)

    s = sub.add_parser("trainers", help="list nnunet_ext's trainers and check nnUNet_extTrainer",
                       description="Without NAME: list nnunet_ext's trainers and check that nnUNet_extTrainer lets "
                                   "nnU-Net find them (exit status 2 with the line to run where it does not). With "
                                   "NAME: say whether nnUNetv2_train -tr NAME will find that trainer, and otherwise "
                                   "why and the closest names.")
    s.add_argument("name", nargs="?", metavar="NAME", help="a trainer class name to look up as nnU-Net does")
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

    from nnunet_ext.conversion import CONVERTERS
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
    """Exception types that are expected failures: printed as one line, no traceback (every one of the
    package's expected failures is a ``UserError``, the converters' included)."""
    from nnunet_ext.errors import UserError
    return (UserError,)


def main(argv=None) -> int:
    from nnunet_ext.paths import debug_enabled

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
