"""airbench's own PyTorch training, run on this project's prepared CIFAR-10: a reference for the residual profile.

The residual profile (profiles/scratch_residual.yaml) is a Keras rebuild of airbench (Keller Jordan,
https://github.com/KellerJordan/cifar10-airbench, MIT licence): airbench94 reaches 94.0% on CIFAR-10 in 9.9
epochs, airbench95, the same net wider, 95.0% in 15. This script answers whether the profile's gap to those
figures comes from the rebuild or from the data: it runs the published training (airbench 0.1.8's
`lib_airbench94.py` and `utils.py` with airbench94's or airbench95's hyperparameters, `--recipe`; ported from CUDA
fp16 to the CPU, nothing else changed) on exactly the images the pipeline trains on, read from the prepared shards.

PyTorch is not a dependency of this project; install it beside the project's environment, e.g.:

    python -m venv /tmp/torchref && /tmp/torchref/bin/pip install "torch<=2.14.1" numpy
    /tmp/torchref/bin/python -m bench.airbench_reference --prepared /tmp/bench-imgclf/data/prepared

run from the repository root. The prepared directory is the one `python -m bench.training` builds from the shared
JPEG archive. By default the run trains on train + val (50,000 images, as airbench does) and reports test accuracy
without and with airbench's test-time augmentation; the result goes to bench/results/
<recipe>-reference[-<name>][-seed-<seed>].json, with its provenance (bench/provenance.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from math import ceil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench import provenance  # standard library only
from imgclf.data import records  # pure Python and numpy: no TensorFlow in this environment

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench" / "results"

# airbench94's hyperparameters, unchanged, less the three its recipes set (RECIPES).
HYP = {
    "opt": {"batch_size": 1024, "momentum": 0.85, "weight_decay": 0.0153, "bias_scaler": 64.0,
            "label_smoothing": 0.2, "whiten_bias_epochs": 3},
    "aug": {"flip": True, "translate": 2},
    "net": {"batchnorm_momentum": 0.6, "scaling_factor": 1 / 9, "tta_level": 2},
}
# The widths, rate (per 1,024 images) and length of each published recipe. airbench95 (airbench 0.1.8's
# `airbench95.py`: 95.01% over 200 runs on the lossless arrays) is airbench94 wider, at 0.87 of its rate, for 15
# epochs; everything else is shared.
RECIPES = {
    "airbench94": {"widths": (64, 256, 256), "lr": 11.5, "train_epochs": 9.9},
    "airbench95": {"widths": (128, 384, 384), "lr": 10.0, "train_epochs": 15.0},
}
CIFAR_MEAN = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
CIFAR_STD = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)


def load_split(prepared: Path, splits: list[str], image_side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NCHW images and int64 labels of the prepared shards of `splits`, in shard order (checksums verified;
    airbench's net takes 32x32 RGB only)."""
    images, labels = [], []
    try:
        for split in splits:
            for record in records.read_records(records.split_files(prepared, split)):
                example = record.example()
                images.append(record.image((image_side, image_side, 3), example))
                labels.append(example.label)
    except (FileNotFoundError, records.CorruptShardError) as error:
        sys.exit(f"{error} (--prepared: a directory `python -m bench.training` prepared from 32x32 CIFAR-10)")
    if not images:
        sys.exit(f"no {'+'.join(splits)} images in {prepared}: give a prepared directory (`python -m "
                 "bench.training` builds one)")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def normalize(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() / 255) - CIFAR_MEAN) / CIFAR_STD


# ---- airbench94's network ----

class Mul(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


class BatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features, momentum, eps=1e-12, weight=False, bias=True):
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = weight
        self.bias.requires_grad = bias


class Conv(nn.Conv2d):
    def __init__(self, channels_in, channels_out, kernel_size=3, padding="same", bias=False):
        super().__init__(channels_in, channels_out, kernel_size=kernel_size, padding=padding, bias=bias)

    def reset_parameters(self):
        super().reset_parameters()
        if self.bias is not None:
            self.bias.data.zero_()
        weight = self.weight.data
        torch.nn.init.dirac_(weight[:weight.size(1)])


class ConvGroup(nn.Module):
    def __init__(self, channels_in, channels_out, batchnorm_momentum):
        super().__init__()
        self.conv1 = Conv(channels_in, channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(channels_out, batchnorm_momentum)
        self.conv2 = Conv(channels_out, channels_out)
        self.norm2 = BatchNorm(channels_out, batchnorm_momentum)
        self.activ = nn.GELU()

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


def make_net(widths: tuple[int, int, int], batchnorm_momentum=HYP["net"]["batchnorm_momentum"]) -> nn.Sequential:
    whiten_width = 2 * 3 * 2**2
    net = nn.Sequential(
        Conv(3, whiten_width, 2, padding=0, bias=True), nn.GELU(),
        ConvGroup(whiten_width, widths[0], batchnorm_momentum),
        ConvGroup(widths[0], widths[1], batchnorm_momentum),
        ConvGroup(widths[1], widths[2], batchnorm_momentum),
        nn.MaxPool2d(3), nn.Flatten(), nn.Linear(widths[2], 10, bias=False), Mul(HYP["net"]["scaling_factor"]))
    net[0].weight.requires_grad = False
    return net.to(memory_format=torch.channels_last)


def init_whitening_conv(layer: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    height, width = layer.weight.shape[2:]
    channels = images.shape[1]
    patches = images.unfold(2, height, 1).unfold(3, width, 1).transpose(1, 3).reshape(-1, channels, height, width)
    flat = patches.reshape(len(patches), -1).float()
    eigenvalues, eigenvectors = torch.linalg.eigh(flat.T @ flat / len(flat), UPLO="U")
    eigenvalues = eigenvalues.flip(0).view(-1, 1, 1, 1)
    eigenvectors = eigenvectors.T.reshape(channels * height * width, channels, height, width).flip(0)
    scaled = eigenvectors / torch.sqrt(eigenvalues + eps)
    layer.weight.data[:] = torch.cat((scaled, -scaled))


# ---- airbench94's data order and augmentation (alternating flips, 2-pixel reflect-padded crops) ----

def batch_flip_lr(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    mask = (torch.rand(len(images), generator=generator) < 0.5).view(-1, 1, 1, 1)
    return torch.where(mask, images.flip(-1), images)


def batch_crop(padded: torch.Tensor, side: int, generator: torch.Generator) -> torch.Tensor:
    r = (padded.size(-1) - side) // 2
    shifts = torch.randint(-r, r + 1, size=(len(padded), 2), generator=generator)
    out = torch.empty((len(padded), padded.shape[1], side, side), dtype=padded.dtype)
    for sy in range(-r, r + 1):
        for sx in range(-r, r + 1):
            mask = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
            out[mask] = padded[mask, :, r + sy:r + sy + side, r + sx:r + sx + side]
    return out


class Loader:
    def __init__(self, images, labels, batch_size, generator, translate=2, altflip=True):
        self.labels, self.batch_size, self.generator, self.altflip = labels, batch_size, generator, altflip
        self.side = images.shape[-1]
        flipped = batch_flip_lr(normalize(images), generator)  # pre-flipped once: the alternating-flip scheme
        self.padded = F.pad(flipped, (translate,) * 4, "reflect")
        self.epoch = 0

    def __len__(self):
        return len(self.labels) // self.batch_size  # drop_last, as airbench's training loader

    def __iter__(self):
        images = batch_crop(self.padded, self.side, self.generator)
        if self.altflip and self.epoch % 2 == 1:
            images = images.flip(-1)
        images = images.contiguous(memory_format=torch.channels_last)
        self.epoch += 1
        order = torch.randperm(len(images), generator=self.generator)
        for i in range(len(self)):
            batch = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield images[batch], self.labels[batch]


class Lookahead:
    def __init__(self, net):
        self.ema = {k: v.clone() for k, v in net.state_dict().items()}

    def update(self, net, decay):
        for ema, param in zip(self.ema.values(), net.state_dict().values(), strict=True):
            if param.dtype in (torch.half, torch.float, torch.bfloat16):
                ema.lerp_(param, 1 - decay)
                param.copy_(ema)


def infer(net, images, tta_level, autocast):
    def mirror(x):
        return 0.5 * net(x) + 0.5 * net(x.flip(-1))

    def mirror_translate(x):
        padded = F.pad(x, (1,) * 4, "reflect")
        translated = torch.stack([mirror(padded[:, :, 0:32, 0:32]), mirror(padded[:, :, 2:34, 2:34])]).mean(0)
        return 0.5 * mirror(x) + 0.5 * translated

    infer_fn = [net, mirror, mirror_translate][tta_level]
    net.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return torch.cat([infer_fn(batch.contiguous(memory_format=torch.channels_last)).float()
                          for batch in normalize(images).split(2000)])


def triangle(steps, start=0.0, end=0.0, peak=0.5):
    xp = torch.tensor([0, int(peak * steps), steps])
    fp = torch.tensor([start, 1, end])
    x = torch.arange(1 + steps)
    m = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1])
    b = fp[:-1] - (m * xp[:-1])
    indices = torch.clamp(torch.sum(torch.ge(x[:, None], xp[None, :]), 1) - 1, 0, len(m) - 1)
    return m[indices] * x + b[indices]


def train(train_images, train_labels, test_images, test_labels, *, recipe, epochs, seed, autocast, log,
          epoch_test=True):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    opt = HYP["opt"]
    batch_size, momentum = opt["batch_size"], opt["momentum"]
    loader = Loader(train_images, train_labels, batch_size, generator, translate=HYP["aug"]["translate"])
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr = RECIPES[recipe]["lr"] / kilostep_scale
    wd = opt["weight_decay"] * batch_size / kilostep_scale
    lr_biases = lr * opt["bias_scaler"]
    loss_fn = nn.CrossEntropyLoss(label_smoothing=opt["label_smoothing"], reduction="none")
    total_steps = ceil(len(loader) * epochs)

    net = make_net(RECIPES[recipe]["widths"])
    norm_biases = [p for k, p in net.named_parameters() if "norm" in k and p.requires_grad]
    other = [p for k, p in net.named_parameters() if "norm" not in k and p.requires_grad]
    optimizer = torch.optim.SGD([dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                                 dict(params=other, lr=lr, weight_decay=wd / lr)], momentum=momentum, nesterov=True)
    schedule = triangle(total_steps, start=0.2, end=0.07, peak=0.23)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: schedule[i])
    alpha_schedule = 0.95**5 * (torch.arange(total_steps + 1) / total_steps) ** 3
    lookahead = Lookahead(net)

    started = time.perf_counter()
    # airbench whitens from the first 5,000 images of its (randomly ordered) arrays; the shards are sorted by class,
    # so the same-sized sample is drawn at random here.
    sample = torch.randperm(len(train_images), generator=generator)[:5000]
    init_whitening_conv(net[0], normalize(train_images[sample]))
    steps, per_epoch = 0, []
    for epoch in range(ceil(epochs)):
        net[0].bias.requires_grad = epoch < opt["whiten_bias_epochs"]
        net.train()
        correct = seen = 0
        for inputs, labels in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                outputs = net(inputs)
            loss = loss_fn(outputs.float(), labels).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            correct += (outputs.detach().argmax(1) == labels).sum().item()
            seen += len(labels)
            steps += 1
            if steps % 5 == 0:
                lookahead.update(net, decay=alpha_schedule[steps].item())
            if steps >= total_steps:
                lookahead.update(net, decay=1.0)
                break
        train_seconds = time.perf_counter() - started
        per_epoch.append({"epoch": epoch + 1, "train_accuracy": round(correct / seen, 4),
                          "cumulative_seconds": round(train_seconds, 1)})
        if epoch_test:  # a curve to read, not to choose by; off where the whole process is timed (bench.vs_airbench)
            test_accuracy = (infer(net, test_images, 0, autocast).argmax(1) == test_labels).float().mean().item()
            started = time.perf_counter() - train_seconds  # evaluation is not charged, as in airbench
            per_epoch[-1]["test_accuracy"] = round(test_accuracy, 4)
        log(per_epoch[-1])
    results = {}
    for level, name in enumerate(("none", "flip", "flip_translate")):
        logits = infer(net, test_images, level, autocast)
        results[name] = round((logits.argmax(1) == test_labels).float().mean().item(), 4)
    return per_epoch, results


def main() -> None:
    run = provenance.start()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, default=Path("/tmp/bench-imgclf/data/prepared"))
    parser.add_argument("--train-splits", default="train,val",
                        help="prepared splits to train on (default train,val: all 50,000 images, as airbench)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="airbench94",
                        help="which published recipe to run (default airbench94)")
    parser.add_argument("--epochs", type=float, default=None, help="training epochs (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bfloat16", action="store_true", help="autocast to bfloat16 (airbench uses fp16 on GPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    parser.add_argument("--name", default="", help="suffix of the result file name")
    parser.add_argument("--no-epoch-test", action="store_true",
                        help="score the test split once, at the end, not after every epoch as well")
    parser.add_argument("--out", type=Path, default=None,
                        help="the result's path (default bench/results/<recipe>-reference[-<name>][-seed-<seed>].json)")
    args = parser.parse_args()
    if args.epochs is None:
        args.epochs = RECIPES[args.recipe]["train_epochs"]
    if args.epochs <= 0:
        parser.error(f"--epochs {args.epochs}: a positive number of epochs")
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = [split.strip() for split in args.train_splits.split(",") if split.strip()]
    train_images, train_labels = load_split(args.prepared, splits)
    test_images, test_labels = load_split(args.prepared, ["test"])
    print(f"training on {len(train_labels)} images ({'+'.join(splits)}), testing on {len(test_labels)}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    per_epoch, tta = train(train_images, train_labels, test_images, test_labels, recipe=args.recipe,
                           epochs=args.epochs, seed=args.seed, autocast=args.bfloat16,
                           log=lambda row: print(row, flush=True), epoch_test=not args.no_epoch_test)
    name = f"{args.recipe}-reference" + (f"-{args.name}" if args.name else "")
    if args.seed != 42:  # runs of several seeds side by side, never one replacing another
        name += f"-seed-{args.seed}"
    result = {
        "benchmark": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        "train_images": len(train_labels),
        "epochs": args.epochs,
        "precision": "bfloat16 autocast" if args.bfloat16 else "float32",
        "train_seconds": per_epoch[-1]["cumulative_seconds"],
        "test_accuracy": tta,
        "per_epoch": per_epoch,
    }
    path = args.out or RESULTS / f"{name}.json"
    provenance.write(path, result, run)  # atomically: a killed run leaves no half-written result
    print(json.dumps(result["test_accuracy"]), "->", path)


if __name__ == "__main__":
    main()
