"""The `ftui` command line: one argparse tree.

argparse (stdlib) keeps `ftui --help` at the cost of the interpreter's start; every handler
imports what it needs when it runs, so torch, transformers and textual load only on the paths
that use them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from engine import __version__
from engine.errors import FtuiError
from tui.cli.output import emit_json, json_mode

Handler = Callable[[argparse.Namespace], int]


def _simulate_option(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    parser.add_argument(
        "--simulate",
        metavar="SPEC",
        # On subcommands SUPPRESS keeps the top-level value (argparse would reset it to None).
        default=None if top_level else argparse.SUPPRESS,
        help="pretend this machine has the given GPUs: a profile id with an optional xN "
        "(h100x8, 4090, a100-80gbx2); plan a rental before paying for it",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftui",
        description="Plan, launch and watch LLM fine-tunes on this machine's GPUs. "
        "With no command, opens the terminal app on the machine view.",
        epilog="Run `ftui COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"ftui {__version__}")
    _simulate_option(parser, top_level=True)
    parser.set_defaults(handler=cmd_app)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    gpus = sub.add_parser("gpus", help="show this machine's GPUs, CPU, RAM and disk")
    gpus.add_argument("--json", action="store_true", help="print one JSON object")
    _simulate_option(gpus, top_level=False)
    gpus.set_defaults(handler=cmd_gpus)

    doctor = sub.add_parser("doctor", help="check the software stack, driver, disk and HF setup")
    doctor.add_argument("--json", action="store_true", help="print one JSON object")
    _simulate_option(doctor, top_level=False)
    doctor.set_defaults(handler=cmd_doctor)

    attach = sub.add_parser("attach", help="open a run's live dashboard (from any session)")
    attach.add_argument("run", help="run id (or a unique prefix) or its directory")
    _simulate_option(attach, top_level=False)
    attach.set_defaults(handler=cmd_app)

    models = sub.add_parser("models", help="list the built-in model profiles")
    models.add_argument("--json", action="store_true", help="print a JSON list")
    models.set_defaults(handler=cmd_models)

    from tui.cli.plan import add_plan_parser

    add_plan_parser(sub)

    from tui.cli.chat import add_chat_parsers
    from tui.cli.data import add_data_parser
    from tui.cli.runs import add_run_parsers

    add_data_parser(sub)
    add_chat_parsers(sub)
    from tui.cli.eval import add_eval_parser

    add_eval_parser(sub)

    from tui.cli.serve import add_serve_parsers

    add_serve_parsers(sub)

    add_run_parsers(sub)

    from tui.cli.download import add_download_parser

    add_download_parser(sub)

    from tui.cli.compare import add_compare_parser

    add_compare_parser(sub)

    gpu_profiles = sub.add_parser("gpu-profiles", help="list the built-in GPU profiles")
    gpu_profiles.add_argument("--json", action="store_true", help="print a JSON list")
    gpu_profiles.set_defaults(handler=cmd_gpu_profiles)
    return parser


def _print_json(data: Any) -> None:
    emit_json(data)


def cmd_app(args: argparse.Namespace) -> int:
    from engine.machine.hardware import make_backend

    backend = make_backend(args.simulate)  # validates the spec before the screen takes over
    attach = getattr(args, "run", None)
    if attach:
        from engine.run.rundir import find_run

        attach = find_run(attach).run_id  # an unknown run is a clear error, not a blank screen
    from tui.app import FtuiApp

    FtuiApp(backend=backend, simulate=args.simulate, attach=attach).run()
    return 0


def cmd_gpus(args: argparse.Namespace) -> int:
    from engine.machine.hardware import detect_machine

    machine = detect_machine(args.simulate, topology=True)
    if args.json:
        _print_json(machine.to_dict())
    else:
        from tui.cli.render import print_machine

        print_machine(machine)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from engine.machine.doctor import doctor_exit_code, run_checks
    from engine.machine.hardware import detect_machine

    checks = run_checks(detect_machine(args.simulate))
    if args.json:
        _print_json({"checks": [c.to_dict() for c in checks], "ok": doctor_exit_code(checks) == 0})
    else:
        from tui.cli.render import print_checks

        print_checks(checks)
    return doctor_exit_code(checks)


def cmd_models(args: argparse.Namespace) -> int:
    from profiles import model_profiles

    profiles = model_profiles()
    if args.json:
        _print_json(
            [
                {"id": p.id, "hf_id": p.hf_id, "family": p.family, "params_b": p.params_b}
                for p in profiles
            ]
        )
    else:
        from tui.cli.render import print_model_profiles

        print_model_profiles(profiles)
    return 0


def cmd_gpu_profiles(args: argparse.Namespace) -> int:
    from profiles import gpu_profiles

    profiles = gpu_profiles()
    if args.json:
        _print_json(
            [
                {
                    "id": p.id,
                    "name": p.name,
                    "memory_gb": p.memory_gb,
                    "bf16_tflops": p.bf16_tflops,
                    "price_usd_per_hour": p.price_usd_per_hour,
                }
                for p in profiles
            ]
        )
    else:
        from tui.cli.render import print_gpu_profiles

        print_gpu_profiles(profiles)
    return 0


def _report_error(error: FtuiError) -> None:
    sys.stderr.write(f"ftui: error: {error.message}\n")
    if error.fix:
        sys.stderr.write(f"  fix: {error.fix}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        with json_mode(bool(getattr(args, "json", False))):
            return handler(args)
    except FtuiError as error:
        _report_error(error)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `ftui gpus --json | head`
        return 0
