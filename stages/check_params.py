"""DVC stage `check_params`, the first and a cheap one (no TensorFlow): validate every key of params.yaml, so that
a typo stops `dvc repro` before any stage works, and point data/input at data.path's local data for `download`."""

from imgclf import cli, fileio
from imgclf.data import input_link

PARAMS = (cli.EVERY_PARAM,)  # validates the whole file, so a misspelt key anywhere stops the pipeline here
# The output `download` depends on: constant, so a valid params edit reruns only the stages that read the keys.
CHECKED = "params.yaml passed imgclf.config validation\n"


def main() -> None:
    def body(params, args):
        input_link.point(args.input_link, source=params.data.source, path=params.data.path,
                         root=cli.project_root())
        fileio.atomic_write_text(args.out, CHECKED)

    cli.stage(__doc__, PARAMS, {"input_link": "link to (re)point at data.path's local file or folder",
                                "out": "marker file written when params.yaml is valid"}, body)


if __name__ == "__main__":
    main()
