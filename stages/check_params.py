"""DVC stage `check_params`, the first and a cheap one (no TensorFlow): validate every key of params.yaml, so that
a typo stops `dvc repro` before any stage works, and resolve `transfer.backbone` from the backbone registry into
the file extract_features reads (`imgclf.training.backbones`: a new registry entry reruns nothing after this)."""

from imgclf import fileio, stage_runner
from imgclf.training import backbones

PARAMS = (stage_runner.EVERY_PARAM,)  # validates the whole file, so a misspelt key anywhere stops the pipeline here
# The output `download` depends on: constant, so a valid params edit reruns only the stages that read the keys.
CHECKED = "params.yaml passed imgclf.config validation\n"


def main() -> None:
    def body(params, args):
        resolved = backbones.resolve(params.transfer)  # an unknown backbone stops the pipeline here too
        fileio.atomic_write_text(args.out, CHECKED)
        fileio.atomic_write_json(args.backbone, resolved)

    stage_runner.stage(__doc__, PARAMS, {"out": "marker file written when params.yaml is valid",
                                         "backbone": "the resolved transfer.backbone, for extract_features"}, body)


if __name__ == "__main__":
    main()
