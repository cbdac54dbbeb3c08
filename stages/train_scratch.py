"""DVC stage `train_scratch`: train the seed CNN from scratch and save it as .keras."""

from imgclf import stage_runner
from imgclf.training import distributed

# The params keys this stage reads: dvc.yaml lists exactly these (tests/code/test_deps.py), stage_runner checks them.
PARAMS = ("seed", "deterministic",
          "augment.enabled", "augment.flip", "augment.translate", "augment.interpolation",
          "augment.rotate", "augment.zoom",
          "augment.contrast", "scratch", "training", "mlflow.experiment")


def main() -> None:
    stage_runner.stage(__doc__, PARAMS, {"data": "prepared data directory",
                                         "exclude": "training ids to leave out (find_duplicates' exclude.json)",
                                         "out": "model directory to write"},
                       train, optional=("exclude",), prepared=("data",))


def train(params, args) -> None:
    # stage_runner has read the prepared data: a missing input was named before the launcher started workers
    # or this process imported TensorFlow and Keras (8-13 s of CPU).
    if distributed.launched(params.training, args.out):
        # multi_worker: this process started and watched the workers and trained nothing, so it never imported
        # TensorFlow and Keras (4 s of CPU on 2 cores, while the workers start).
        return
    from imgclf.training import scratch

    scratch.train_scratch(params, prepared_dir=args.data, out_dir=args.out, project_root=stage_runner.project_root(),
                          exclude_path=args.exclude)


if __name__ == "__main__":
    main()
