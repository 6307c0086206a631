"""The ``mrgrpo`` command line.

Commands::

    mrgrpo train RECIPE [--set key=value ...] [--resume [DIR|auto]] [--launch]
    mrgrpo sample RECIPE_OR_CKPT --prompt "..." [--image ref.png] --out out.png
    mrgrpo serve REWARD [--host 127.0.0.1] [--port N] [--max-batch B] [--token T]
    mrgrpo rewards list
    mrgrpo policies list
    mrgrpo recipes list | validate [RECIPE ...] | schema | show RECIPE
    mrgrpo data synth --out DIR

Heavy modules are imported only by the command that needs them, so ``--help`` is instant.
Subcommands owned by other modules expose ``add_arguments(parser)`` and ``run(args) -> int``.

Every command runs inside one error boundary (:func:`mrgrpo.errors.run_guarded`): a user's mistake
prints one ``error: ...`` message naming the field or file and the fix, with exit status 2; a bug
prints its traceback and how to report it. ``--debug`` (any command) or ``MRGRPO_DEBUG=1`` shows
tracebacks for every error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def _recipes_dir() -> Path:
    """The shipped recipes: the repo's ``recipes/`` (editable install) or ``./recipes``."""
    for candidate in (RECIPES_DIR, Path.cwd() / "recipes"):
        if candidate.is_dir():
            return candidate
    return RECIPES_DIR


def _shipped_recipes() -> list[Path]:
    return sorted(p for p in _recipes_dir().glob("*.yaml"))


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


# -- recipes ------------------------------------------------------------------------------
def _cmd_recipes_list(args: argparse.Namespace) -> int:
    from mrgrpo.recipe_files import apply_extends, read_recipe_yaml

    for path in _shipped_recipes():
        first = ""
        for line in path.read_text().splitlines():
            if line.startswith("#"):
                first = line.lstrip("# ").strip()
                break
        stage = apply_extends(read_recipe_yaml(path), path.parent, str(path), (path.resolve(),)).get("stage", "rl")
        print(
            f"{path.relative_to(_recipes_dir().parent) if _recipes_dir().parent in path.parents else path}"
            f"  [{stage}]  {first}"
        )
    return 0


def _cmd_recipes_validate(args: argparse.Namespace) -> int:
    from mrgrpo.config import load_recipe
    from mrgrpo.errors import MrgrpoError
    from mrgrpo.preflight import preflight

    paths = [Path(p) for p in args.recipes] or _shipped_recipes()
    if not paths:
        return _fail(f"no recipes given and none found in {_recipes_dir()}")
    failed = 0
    for path in paths:
        try:
            cfg = load_recipe(path, args.set, check_files=not args.no_files)
            warnings = preflight(cfg, check_files=not args.no_files, source=str(path))
        except MrgrpoError as exc:
            failed += 1
            print(f"FAIL {path}\n{exc}", file=sys.stderr)
            continue
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        print(f"ok   {path}  (stage={cfg.stage}, policy={cfg.policy.name}, rewards={sorted(cfg.rewards) or '-'})")
    return 1 if failed else 0


def _cmd_recipes_schema(args: argparse.Namespace) -> int:
    from mrgrpo.config import schema_markdown

    print(schema_markdown())
    return 0


def _cmd_recipes_show(args: argparse.Namespace) -> int:
    from mrgrpo.config import dump_config, load_recipe

    cfg = load_recipe(args.recipe, args.set, check_files=False)
    print(dump_config(cfg), end="")
    return 0


# -- registries -------------------------------------------------------------------------
def _list_registry(registry_name: str) -> Callable[[argparse.Namespace], int]:
    def _run(args: argparse.Namespace) -> int:
        from mrgrpo import registry

        reg = getattr(registry, registry_name)
        described = reg.describe()
        if not described:
            print(f"(no {reg.kind}s registered)")
        width = max((len(n) for n in described), default=0)
        for name, help_text in described.items():
            print(f"{name.ljust(width)}  {help_text}")
        return 0

    return _run


# -- train --------------------------------------------------------------------------------
def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML (see `mrgrpo recipes list`)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set train.lr=1e-5 (repeatable)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="DIR|auto",
        help="resume from a checkpoint directory, or the latest one in output_dir (auto)",
    )
    p.add_argument(
        "--launch", action="store_true", help="re-launch through `accelerate launch` with distributed.accelerate_config"
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from mrgrpo.config import load_recipe
    from mrgrpo.preflight import preflight

    overrides = list(args.set)
    if args.resume:
        overrides.append(f"train.resume={args.resume}")
    cfg = load_recipe(args.recipe, overrides)
    # names, kwargs, files, output_dir: before any model is built
    for warning in preflight(cfg, training=True, source=str(args.recipe)):
        print(f"warning: {warning}", file=sys.stderr)
    if args.launch:
        from mrgrpo.launch import relaunch

        return relaunch(cfg, args.recipe, overrides)
    module = {"rl": "mrgrpo.grpo", "pretrain": "mrgrpo.sft", "sft": "mrgrpo.sft"}[cfg.stage]
    return int(importlib.import_module(module).train(cfg) or 0)


# -- delegated subcommands ----------------------------------------------------------------
def _delegate(
    module_name: str, what: str
) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]:
    """``add_arguments`` / ``run`` of the module behind a subcommand, imported only when that command runs
    (``mrgrpo --help`` must not import torch)."""

    def add(parser: argparse.ArgumentParser) -> None:
        importlib.import_module(module_name).add_arguments(parser)

    def run(args: argparse.Namespace) -> int:
        return int(importlib.import_module(module_name).run(args) or 0)

    return add, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrgrpo", description="Multi-reward GRPO for flow-matching text-to-image and editing models."
    )
    parser.add_argument(
        "--version", action="version", version=f"mrgrpo {importlib.import_module('mrgrpo').__version__}"
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error (also MRGRPO_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _debug_everywhere(sub)

    p = sub.add_parser("train", help="run a recipe (MR-GRPO, pre-training or SFT, by its `stage`)")
    _add_train_arguments(p)
    p.set_defaults(func=_cmd_train)

    for name, module, what, help_text in (
        ("sample", "mrgrpo.sample", "mrgrpo sample", "generate images from a recipe's policy or a saved checkpoint"),
        (
            "serve",
            "mrgrpo.reward_servers.cli",
            "mrgrpo serve",
            "serve a registered reward over HTTP (or launch the vLLM judge)",
        ),
        (
            "eval",
            "mrgrpo.eval",
            "mrgrpo eval",
            "score a saved policy on a prompt file with registered rewards (per-category table)",
        ),
    ):
        add, run = _delegate(module, what)
        p = sub.add_parser(name, help=help_text)
        add(p)
        p.set_defaults(func=run)

    p = sub.add_parser("rewards", help="reward registry")
    rsub = p.add_subparsers(dest="rewards_command", metavar="ACTION", required=True)
    rsub.add_parser("list", help="list registered rewards (built-ins and plug-ins)").set_defaults(
        func=_list_registry("REWARDS")
    )

    p = sub.add_parser("policies", help="policy registry")
    psub = p.add_subparsers(dest="policies_command", metavar="ACTION", required=True)
    psub.add_parser("list", help="list registered policies").set_defaults(func=_list_registry("POLICIES"))

    p = sub.add_parser("recipes", help="list, validate and document recipes")
    rs = p.add_subparsers(dest="recipes_command", metavar="ACTION", required=True)
    rs.add_parser("list", help="the shipped recipes").set_defaults(func=_cmd_recipes_list)
    v = rs.add_parser("validate", help="validate recipes (all shipped ones when none are given)")
    v.add_argument("recipes", nargs="*", help="recipe files")
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override before validating")
    v.add_argument("--no-files", action="store_true", help="skip checks that data files exist")
    v.set_defaults(func=_cmd_recipes_validate)
    rs.add_parser("schema", help="print the recipe schema as a Markdown table").set_defaults(func=_cmd_recipes_schema)
    s = rs.add_parser("show", help="print a recipe with every default filled in")
    s.add_argument("recipe")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.set_defaults(func=_cmd_recipes_show)

    p = sub.add_parser("data", help="datasets")
    ds = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    add, run = _delegate("mrgrpo.sft_data.synth", "mrgrpo data synth")
    syn = ds.add_parser("synth", help="write a synthetic T2I + editing dataset (shapes, words) for smoke runs")
    add(syn)
    syn.set_defaults(func=run)
    return parser


def _debug_everywhere(sub: argparse._SubParsersAction) -> None:
    """Let ``--debug`` follow any command too (``mrgrpo train r.yaml --debug``)."""
    add_parser = sub.add_parser

    def add_with_debug(*a, **kw):
        p = add_parser(*a, **kw)
        p.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks (also MRGRPO_DEBUG=1)"
        )
        original = p.add_subparsers

        def add_subparsers(**skw):
            s = original(**skw)
            _debug_everywhere(s)
            return s

        p.add_subparsers = add_subparsers
        return p

    sub.add_parser = add_with_debug  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (0 ok, 2 a user's error, 1 a bug, 130 Ctrl-C)."""
    from mrgrpo.errors import run_guarded

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its usage message
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return run_guarded(lambda: args.func(args), debug=getattr(args, "debug", False))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
