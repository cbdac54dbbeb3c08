"""DVC stage `check_params`, the first and a cheap one (no TensorFlow): validate every key of params.yaml, so that
a typo stops `dvc repro` before any stage works."""

from imgclf import cli, fileio

PARAMS = (cli.EVERY_PARAM,)  # validates the whole file, so a misspelt key anywhere stops the pipeline here
# The output `download` depends on: constant, so a valid params edit reruns only the stages that read the keys.
CHECKED = "params.yaml passed imgclf.config validation\n"


def main() -> None:
    def body(params, args):
        fileio.atomic_write_text(args.out, CHECKED)

    cli.stage(__doc__, PARAMS, {"out": "marker file written when params.yaml is valid"}, body)


if __name__ == "__main__":
    main()
