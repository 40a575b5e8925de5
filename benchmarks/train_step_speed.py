r"""Seconds for epochs of the repair's training loop, by memory layout and malloc setting.

One arm per process (the allocator setting holds for the whole process): the working copy in
the default or the channels-last layout, and glibc's ``malloc`` as is or with ``mallopt``
(mmap threshold 32 MiB, trim threshold 1 GiB). The loop is :func:`onp.training.train_classifier`
at a round's settings (batch 64, augmentation, distillation 0.25, stamped distillation 1.0 on
30% of the rows) with a channels-last teacher, on 3000 random images: only the time is read.
Prints the seconds, system seconds and minor page faults. Both arms were dropped
(docs/research/repair.md,
"Two speed-ups tried and dropped"); channels-last training aborted in a repair test.

Example::

    python benchmarks/train_step_speed.py --model runs/bench-fmnist-a/models/wanet-s0/model \
        --layout channels_last --allocator mallopt
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import resource
import time
from pathlib import Path

import torch

from onp.models.bundle import load_bundle
from onp.models.layout import channels_last_copy
from onp.training import TrainSettings, train_classifier

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--layout", choices=("default", "channels_last"), default="default")
    parser.add_argument("--allocator", choices=("default", "mallopt"), default="default")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    if args.allocator == "mallopt":
        libc = ctypes.CDLL("libc.so.6")
        if not (libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1
                and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1):
            raise SystemExit("mallopt refused the settings (not glibc?)")
    torch.manual_seed(0)
    model = load_bundle(args.model)
    work = channels_last_copy(model) if args.layout == "channels_last" else copy.deepcopy(model)
    teacher = channels_last_copy(model).eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3000, *model.spec.input_shape, generator=generator)
    labels = torch.randint(0, model.spec.num_classes, (3000,), generator=generator)
    clean = torch.rand(3000, generator=generator) > 0.3
    settings = TrainSettings(epochs=args.epochs, batch_size=64, lr=0.01, augment=True,
                             schedule="constant", distill_weight=0.25,
                             stamped_distill_weight=1.0)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    train_classifier(work, images, labels, settings, augment_mask=clean, teacher=teacher,
                     teacher_images=images)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    print(f"{args.layout} {args.allocator}: {args.epochs} epochs {seconds:.2f} s, system "
          f"{after.ru_stime - before.ru_stime:.2f} s, minor faults "
          f"{after.ru_minflt - before.ru_minflt}")


if __name__ == "__main__":
    main()
