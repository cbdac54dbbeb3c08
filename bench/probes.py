"""Measurements the training benchmarks run in a process of their own, in the project copy (bench/common.py's
`probe`): each prints one JSON line.

    python -m bench.probes test-accuracy --model M --prepared P [--features F] [--tta-flip]
    python -m bench.probes backbone-in-loop --prepared P --backbone B --size 96 --images 2048
    python -m bench.probes pipeline-ratio --prepared P [--steps 150]

A process of their own: Keras' dtype policy and compiled functions are global, and the parent never imports
TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import time


def test_accuracy(*, model: str, prepared: str, features: str | None, tta_flip: bool) -> float:
    """Test accuracy of a saved model, scored by the evaluate stage's own `predict` (so `tta_flip`, scores
    averaged with the mirror image's, is the stage's); with `features`, its head on the cached test features (the
    same computation, much faster)."""
    import numpy as np

    from imgclf import artifacts, model_io
    from imgclf.data import tfdata
    from imgclf.evaluation import evaluate

    loaded = model_io.load_model(model)
    if features:
        from imgclf.training import recipe

        x, y = recipe.load_features(features, "test")
        head = loaded.get_layer("head")
        return float((np.argmax(head.predict(x, batch_size=1024, verbose=0), 1) == y).mean())
    meta = artifacts.read_prepared_meta(prepared)
    data = tfdata.make_dataset(prepared, "test", image_shape=meta.image_shape, num_classes=meta.num_classes,
                               batch_size=512, with_index=True)
    scored = evaluate.predict(loaded, tfdata.iterate_numpy(data), flip=tta_flip, description="test accuracy")
    return float((scored.probabilities.argmax(1) == scored.labels).mean())


def backbone_in_loop(*, prepared: str, backbone: str, size: int, images: int) -> float:
    """Seconds of one epoch of the head with the frozen backbone in the loop, timed on `images` training images
    and scaled to the whole training split."""
    import numpy as np

    from imgclf import artifacts
    from imgclf.config import TransferConfig
    from imgclf.data import tfdata
    from imgclf.training import backbones, features, transfer_model

    meta = artifacts.read_prepared_meta(prepared)
    config = TransferConfig(backbone=backbone, input_size=size)
    network, mode = features.load_backbone(backbones.resolve(config), config)
    network.trainable = False
    extractor = transfer_model.build_feature_extractor(network, mode, input_shape=meta.image_shape, input_size=size)
    head = transfer_model.build_head(config, train_features=np.zeros((2, extractor.output_shape[-1]), "float32"),
                             num_classes=meta.num_classes)
    model = transfer_model.assemble_transfer_model(extractor, head)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    data = tfdata.make_dataset(prepared, "train", image_shape=meta.image_shape, num_classes=meta.num_classes,
                               batch_size=64, training=True, example_count=64000)
    steps = images // 64
    model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)  # trace and warm up
    started = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return (time.perf_counter() - started) / (steps * 64) * meta.counts["train"]


def pipeline_ratio(*, prepared: str, steps: int) -> dict:
    """Training images/s of the seed CNN fed by the tf.data pipeline and by in-memory tensors, each twice."""
    import keras
    import numpy as np

    from imgclf import artifacts
    from imgclf.config import Params
    from imgclf.data import tfdata
    from imgclf.training import scratch_model

    meta = artifacts.read_prepared_meta(prepared)
    shape, classes, count = meta.image_shape, meta.num_classes, meta.counts["train"]

    def model():
        built = scratch_model.build_scratch_model(Params().scratch, input_shape=shape, num_classes=classes)
        built.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
        return built

    pipeline = tfdata.make_dataset(prepared, "train", image_shape=shape, num_classes=classes, batch_size=64,
                                   training=True, example_count=count, epochs=20)
    x, y = [], []
    for images, labels in pipeline.take(steps):
        x.append(images.numpy())
        y.append(labels.numpy())
    x, y = np.concatenate(x), np.concatenate(y)

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.started

    rates = {}
    # Two epochs of `steps` steps in one fit call; the second is timed: steady state, tracing and the first fill
    # of the shuffle buffer excluded, for both inputs alike.
    for name in ["in_memory", "pipeline", "in_memory_again", "pipeline_again"]:
        fitted, timer = model(), EpochTimer()
        if name.startswith("pipeline"):
            fitted.fit(pipeline, steps_per_epoch=steps, epochs=2, verbose=0, callbacks=[timer])
        else:
            fitted.fit(x, y, batch_size=64, epochs=2, verbose=0, shuffle=True, callbacks=[timer])
        rates[name] = steps * 64 / timer.seconds
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    probes = parser.add_subparsers(dest="probe", required=True)
    accuracy = probes.add_parser("test-accuracy")
    accuracy.add_argument("--model", required=True)
    accuracy.add_argument("--prepared", required=True)
    accuracy.add_argument("--features")
    accuracy.add_argument("--tta-flip", action="store_true")
    in_loop = probes.add_parser("backbone-in-loop")
    in_loop.add_argument("--prepared", required=True)
    in_loop.add_argument("--backbone", required=True)
    in_loop.add_argument("--size", type=int, required=True)
    in_loop.add_argument("--images", type=int, default=2048)
    ratio = probes.add_parser("pipeline-ratio")
    ratio.add_argument("--prepared", required=True)
    ratio.add_argument("--steps", type=int, default=150)
    arguments = parser.parse_args()
    if arguments.probe == "test-accuracy":
        value = test_accuracy(model=arguments.model, prepared=arguments.prepared, features=arguments.features,
                              tta_flip=arguments.tta_flip)
    elif arguments.probe == "backbone-in-loop":
        value = backbone_in_loop(prepared=arguments.prepared, backbone=arguments.backbone, size=arguments.size,
                                 images=arguments.images)
    else:
        value = pipeline_ratio(prepared=arguments.prepared, steps=arguments.steps)
    print(json.dumps(value))


if __name__ == "__main__":
    main()
