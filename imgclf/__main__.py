"""The `imgclf` command line: tools around the DVC pipeline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="imgclf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    smoke = commands.add_parser("smoke", help="run every stage on tiny synthetic data in a scratch copy")
    smoke.add_argument("--dir", type=Path, default=Path("smoke"), help="where the copy goes (default: smoke/)")
    check = commands.add_parser("check-params", help="validate a params file and print it resolved")
    check.add_argument("path", nargs="?", type=Path, default=Path("params.yaml"))
    arguments = parser.parse_args(argv)

    if arguments.command == "smoke":
        from imgclf import fileio, sandbox

        seconds = sandbox.smoke(arguments.dir, source_root=Path.cwd())
        metrics = fileio.read_json(arguments.dir / "results" / "evaluate" / "metrics.json")
        for model, values in metrics.items():
            print(f"{model:>9}: test accuracy {values['accuracy']:.3f}")
        print(f"smoke run: all stages in {seconds:.1f} s (outputs in {arguments.dir}/)")
    elif arguments.command == "check-params":
        from imgclf import config

        print(json.dumps(config.params_to_dict(config.load_params(arguments.path)), indent=2))


if __name__ == "__main__":
    main()
