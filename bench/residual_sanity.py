"""A few-minute check that the residual recipe learns on real CIFAR-10 at its translated learning rate.

    python -m bench.residual_sanity

3 epochs on 3,000 random training JPEGs (batch 256, the profile's rate scaled to it, 1 warm-up epoch), test
accuracy on 1,000 random test JPEGs after each. Not a benchmark (it reads the shared archive directly, not
through the stages); `python -m bench.training residual` is the real run.
"""

import io
import json
import tarfile
import time

import keras
import numpy as np
from PIL import Image

from bench import common
from bench.common import ARCHIVE, ROOT
from imgclf.training import fitting, scratch_model

rng = np.random.default_rng(0)
members = {"train": [], "test": []}
with tarfile.open(str(ARCHIVE)) as tar:
    for m in tar:
        if m.isfile() and m.name.endswith(".jpg"):
            split, klass, _ = m.name.split("/")[-3:]
            members[split].append((m, klass))
    classes = sorted({k for _, k in members["train"]})
    def load(split, count):
        chosen = rng.choice(len(members[split]), size=count, replace=False)
        x = np.stack([np.asarray(Image.open(io.BytesIO(tar.extractfile(members[split][i][0]).read())).convert("RGB"))
                      for i in chosen]).astype("float32")
        y = np.array([classes.index(members[split][i][1]) for i in chosen])
        return x, y
    x_train, y_train = load("train", 3000)
    x_test, y_test = load("test", 1000)
params = common.profile_params(ROOT / "profiles" / "scratch_residual.yaml")
batch = 256
scratch = params.scratch.model_copy(update={"batch_size": batch, "epochs": 3, "warmup_epochs": 1.0,
                                            "learning_rate": params.scratch.learning_rate * batch
                                            / params.scratch.batch_size})
keras.utils.set_random_seed(0)
model = scratch_model.build_scratch_model(scratch, input_shape=(32, 32, 3), num_classes=10)
scratch_model.set_patch_whitening(model, x_train)
steps = -(-len(x_train) // batch)
model.compile(optimizer=fitting.make_optimizer(scratch, steps_per_epoch=steps), loss=fitting.make_loss(scratch),
              metrics=["accuracy"], jit_compile=params.training.jit_compile)
started = time.time()
h = model.fit(x_train, keras.utils.to_categorical(y_train, 10), batch_size=batch, epochs=3, verbose=2,
              validation_data=(x_test, keras.utils.to_categorical(y_test, 10)))
print(json.dumps({"train_images": 3000, "test_images": 1000, "epochs": 3, "batch": batch,
                  "learning_rate": scratch.learning_rate, "loss": h.history["loss"],
                  "test_accuracy_per_epoch": h.history["val_accuracy"], "seconds": round(time.time() - started, 1)}))
