"""DVC stage `fingerprint_data` (always run, seconds, no TensorFlow): digest data.path's local folder or archive
into the project, so `download` reruns when the data changes; the project never links to the data
(imgclf/data/fingerprint.py says why). Being the stage every `dvc repro` runs, it also settles the registry
aliases of an evaluation killed while it moved them (imgclf/tracking/recovery.py)."""

from imgclf import stage_runner
from imgclf.data import fingerprint
from imgclf.tracking import recovery

PARAMS = ("data.source", "data.path")


def main() -> None:
    def body(params, args):
        root = stage_runner.project_root()
        recovery.reconcile(root)
        fingerprint.remove_legacy_link(root)
        fingerprint.write(args.out, fingerprint.fingerprint(params.data.source, params.data.path, project=root))

    stage_runner.stage(__doc__, PARAMS, {"out": "the fingerprint file to write (download depends on it)"}, body)


if __name__ == "__main__":
    main()
