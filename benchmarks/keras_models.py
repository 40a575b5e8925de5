r"""Backdoored Keras models of three kinds, trained with TensorFlow, for onp.apply end to end.

Three steps, two environments (ONP's, and a side one with TensorFlow; CI runs neither)::

    # 1. ONP's environment: the images, as npz (Fashion-MNIST stands in for MNIST: no MNIST here)
    python benchmarks/keras_models.py export --datasets-dir ../shared/datasets --work runs/keras
    # 2. The TensorFlow environment: train, poison, save the model and the CSAW-style data files
    /tmp/tfenv/bin/python benchmarks/keras_models.py train --work runs/keras
    # 3. ONP's environment: import each, compare with Keras's softmax, print the apply commands
    python benchmarks/keras_models.py check --work runs/keras
    # 4. after running those commands: the table of docs/results/keras-models/README.md
    python benchmarks/keras_models.py table --work runs/keras --out docs/results/keras-models

``train`` makes, for each model, a BadNets backdoor (a 3x3 white patch in the bottom-right corner,
10% of the training images relabelled to the target class) and writes under ``runs/keras/<name>/``:
the model file, ``clean_validation_data.h5`` (the defender's clean images, never trained on),
``clean_test_data.h5``, ``poisoned_test_data.h5`` (labels = the target, CSAW-HackML's
convention) and ``keras_reference.npz`` (test images and Keras's softmax, for the equality check).

Models (each a layout ONP reads):
  * ``mnist-cnn``: the Keras ``mnist_cnn`` example (Conv 32, Conv 64, MaxPool, Dense 128), tf-keras
    (Keras 2) full ``.h5``, as CSAW-HackML's files;
  * ``cifar10-nin``: a network-in-network (5x5 / 3x3 convs with 1x1 convs, BatchNorm, max and
    average pooling, global average pooling), Keras 3 ``.keras``;
  * ``gtsrb-cnn``: Conv/BatchNorm/MaxPool x3, Flatten, Dense 256, Dense 43, Keras 3 weights-only
    ``.weights.h5`` with its ``model.to_json()``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

SEED = 0
POISON_RATE = 0.1
PATCH = 3
DEFENSE_IMAGES = 2000  # CSAW-style clean validation data: the defender's, never trained on
TEST_IMAGES = 2000
SETS = {  # dataset -> (model name, training images, epochs)
    "fashion-mnist": ("mnist-cnn", 20000, 2),
    "cifar10": ("cifar10-nin", 30000, 6),
    "gtsrb": ("gtsrb-cnn", 39209, 4),
}


def export(datasets_dir: Path, work: Path) -> None:
    """Write ``<work>/<dataset>.npz`` (x_train, y_train, x_test, y_test; uint8 NHWC)."""
    from onp.data.registry import load_train_test

    roots = {"fashion-mnist": None,
             "cifar10": datasets_dir / "cifar10-jpeg" / "cifar10_jpeg_q75_yoongikim.tar.gz",
             "gtsrb": datasets_dir / "gtsrb32" / "gtsrb32_hergerr.tar.xz"}
    work.mkdir(parents=True, exist_ok=True)
    for dataset, root in roots.items():
        train, test = load_train_test(dataset, root)

        def nhwc(images) -> np.ndarray:  # noqa: ANN001 - [N, C, H, W] float in [0, 1]
            return (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)

        np.savez(work / f"{dataset}.npz", x_train=nhwc(train.images),
                 y_train=train.labels.numpy(), x_test=nhwc(test.images),
                 y_test=test.labels.numpy())
        print(dataset, tuple(train.images.shape), tuple(test.images.shape))


def _models(keras, classes: int, shape: tuple[int, ...]) -> dict:  # noqa: ANN001
    layers = keras.layers

    def mnist_cnn():  # noqa: ANN202 - the Keras mnist_cnn.py example
        return keras.Sequential([
            keras.Input(shape), layers.Conv2D(32, 3, activation="relu"),
            layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
            layers.Dropout(0.25), layers.Flatten(), layers.Dense(128, activation="relu"),
            layers.Dropout(0.5), layers.Dense(classes, activation="softmax")])

    def nin():  # noqa: ANN202
        image = keras.Input(shape)
        x = image
        for width, kernel, pool in ((96, 5, "max"), (128, 3, "avg")):
            x = layers.Conv2D(width, kernel, padding="same")(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
            x = layers.Conv2D(96, 1, activation="relu")(x)
            x = layers.Conv2D(96, 1, activation="relu")(x)
            pooling = layers.MaxPooling2D if pool == "max" else layers.AveragePooling2D
            x = pooling(3, strides=2, padding="same")(x)
            x = layers.Dropout(0.3)(x)
        x = layers.Conv2D(128, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(96, 1, activation="relu")(x)
        x = layers.Conv2D(classes, 1)(x)
        x = layers.GlobalAveragePooling2D()(x)
        return keras.Model(image, layers.Activation("softmax")(x))

    def gtsrb_cnn():  # noqa: ANN202
        blocks = []
        for width in (32, 64, 128):
            blocks += [layers.Conv2D(width, 3, padding="same", activation="relu"),
                       layers.BatchNormalization(), layers.MaxPooling2D(2)]
        return keras.Sequential([keras.Input(shape), *blocks, layers.Flatten(),
                                 layers.Dense(256, activation="relu"), layers.Dropout(0.4),
                                 layers.Dense(classes, activation="softmax")])

    return {"mnist-cnn": mnist_cnn, "cifar10-nin": nin, "gtsrb-cnn": gtsrb_cnn}


def stamp(images: np.ndarray) -> np.ndarray:
    """BadNets: a white PATCH x PATCH square in the bottom-right corner (uint8 NHWC)."""
    out = images.copy()
    out[:, -PATCH:, -PATCH:, :] = 255
    return out


def _write_h5(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    import h5py

    with h5py.File(path, "w") as handle:  # CSAW-HackML layout: float32 pixels 0..255, NHWC
        handle["data"] = images.astype(np.float32)
        handle["label"] = labels.astype(np.float32)


def train(work: Path, only: list[str]) -> None:
    """Train, poison and save each model with TensorFlow (see the module docstring)."""
    for dataset, (name, count, epochs) in SETS.items():
        if only and name not in only:
            continue
        legacy = name == "mnist-cnn"
        if legacy:
            os.environ["TF_USE_LEGACY_KERAS"] = "1"
            import tf_keras as keras
        else:
            import keras
        keras.utils.set_random_seed(SEED)
        rng = np.random.default_rng(SEED)
        with np.load(work / f"{dataset}.npz") as data:
            x_all, y_all = data["x_train"], data["y_train"]
            x_test, y_test = data["x_test"], data["y_test"]
        classes = int(y_all.max()) + 1
        target = int(rng.integers(classes))
        order = rng.permutation(len(x_all))
        defense = order[:DEFENSE_IMAGES]
        fit = order[DEFENSE_IMAGES:DEFENSE_IMAGES + min(count, len(order) - DEFENSE_IMAGES)]
        x, y = x_all[fit].copy(), y_all[fit].copy()
        poisoned = rng.choice(len(x), int(POISON_RATE * len(x)), replace=False)
        x[poisoned], y[poisoned] = stamp(x[poisoned]), target
        model = _models(keras, classes, x.shape[1:])[name]()
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x / 255.0, y, batch_size=64, epochs=epochs, verbose=2)
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        test = rng.permutation(len(x_test))[:TEST_IMAGES]
        clean_x, clean_y = x_test[test], y_test[test]
        keep = clean_y != target
        bd_x = stamp(clean_x[keep])
        ca = float((model.predict(clean_x / 255.0, verbose=0).argmax(1) == clean_y).mean())
        asr = float((model.predict(bd_x / 255.0, verbose=0).argmax(1) == target).mean())
        _write_h5(folder / "clean_validation_data.h5", x_all[defense], y_all[defense])
        _write_h5(folder / "clean_test_data.h5", clean_x, clean_y)
        _write_h5(folder / "poisoned_test_data.h5", bd_x, np.full(len(bd_x), target))
        reference = clean_x[:64] / 255.0
        np.savez_compressed(folder / "keras_reference.npz", x=reference.astype(np.float32),
                            softmax=model.predict(reference, verbose=0))
        if name == "mnist-cnn":
            model.save(folder / "bd_net.h5")
        elif name == "cifar10-nin":
            model.save(folder / "bd_net.keras")
        else:
            model.save_weights(folder / "bd_net.weights.h5")
            (folder / "bd_net.json").write_text(model.to_json())
        record = {"model": name, "dataset": dataset, "keras": keras.__version__,
                  "target": target, "poison_rate": POISON_RATE, "train_images": len(x),
                  "epochs": epochs, "keras_test_CA": ca, "keras_test_ASR": asr}
        (folder / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record))


MODEL_FILES = {"mnist-cnn": ("bd_net.h5", None), "cifar10-nin": ("bd_net.keras", None),
               "gtsrb-cnn": ("bd_net.weights.h5", "bd_net.json")}


def check(work: Path) -> None:
    """Import each model with ONP, compare with Keras's softmax; write ``import_check.json``."""
    import torch

    from onp.graph.groups import trace_groups
    from onp.models.loading import load_model

    for name, (model_file, config) in MODEL_FILES.items():
        folder = work / name
        options = {"keras_config": str(folder / config)} if config else {}
        model = load_model(folder / model_file, **options)
        with np.load(folder / "keras_reference.npz") as reference:
            x = torch.from_numpy(reference["x"]).permute(0, 3, 1, 2)
            keras_softmax = reference["softmax"]
        with torch.no_grad():
            softmax = torch.softmax(model(x), 1).numpy()
        groups = trace_groups(model, model.spec.input_shape)
        record = {"model": name, "file": model_file, "layout": model.spec.provenance["format"],
                  "images": len(x), "max_abs_softmax_diff": float(np.abs(softmax
                                                                          - keras_softmax).max()),
                  "same_argmax": bool((softmax.argmax(1) == keras_softmax.argmax(1)).all()),
                  "channel_groups": len(groups.groups), "channel_nodes": groups.num_nodes}
        (folder / "import_check.json").write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record))
        extra = f" --keras-config {folder / config}" if config else ""
        print(f"python -m onp.apply --model {folder / model_file}{extra} --data "
              f"{folder / 'clean_validation_data.h5'} --eval-data {folder / 'clean_test_data.h5'}"
              f" --eval-poisoned {folder / 'poisoned_test_data.h5'} --out {work / 'apply'}-{name}")


def table(work: Path, out: Path) -> None:
    """Write ``out/results.json`` and ``out/table.md`` from the training, check and apply files."""
    rows = []
    for name in MODEL_FILES:
        folder = work / name
        record = json.loads((folder / "training.json").read_text())
        record |= {"import": json.loads((folder / "import_check.json").read_text())}
        report_path = work / f"apply-{name}" / "report.json"
        if report_path.is_file():
            report = json.loads(report_path.read_text())
            record |= {"apply": {key: report[key] for key in ("test", "seconds", "mask")
                                 if key in report},
                       "suspected_targets": report.get("signal", {}).get("target", {}).get(
                           "targets")}
        rows.append(record)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| model | layout | Keras CA / ASR % | max softmax diff | same argmax | groups / "
             "nodes | target / suspected | B CA / ASR % | B' CA / ASR % | DER | apply s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        check_row, apply = row["import"], row.get("apply", {})
        test = apply.get("test", {})
        b, repaired = test.get("B", {}), test.get("B'", {})
        lines.append(
            f"| {row['model']} | {check_row['layout']} | {100 * row['keras_test_CA']:.1f} / "
            f"{100 * row['keras_test_ASR']:.1f} | {check_row['max_abs_softmax_diff']:.1e} | "
            f"{check_row['same_argmax']} | {check_row['channel_groups']} / "
            f"{check_row['channel_nodes']} | {row['target']} / {row.get('suspected_targets')} | "
            f"{b.get('CA', '–')} / {b.get('ASR', '–')} | "
            f"{repaired.get('CA', '–')} / {repaired.get('ASR', '–')} | {test.get('DER', '–')} | "
            f"{apply.get('seconds', {}).get('total', '–')} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    first = sub.add_parser("export")
    first.add_argument("--datasets-dir", type=Path, default=Path("../shared/datasets"))
    first.add_argument("--work", type=Path, default=Path("runs/keras"))
    second = sub.add_parser("train")
    second.add_argument("--work", type=Path, default=Path("runs/keras"))
    second.add_argument("--only", nargs="*", default=[])
    third = sub.add_parser("check")
    third.add_argument("--work", type=Path, default=Path("runs/keras"))
    fourth = sub.add_parser("table")
    fourth.add_argument("--work", type=Path, default=Path("runs/keras"))
    fourth.add_argument("--out", type=Path, default=Path("docs/results/keras-models"))
    args = parser.parse_args()
    if args.step == "export":
        export(args.datasets_dir, args.work)
    elif args.step == "train":
        train(args.work, args.only)
    elif args.step == "check":
        check(args.work)
    else:
        table(args.work, args.out)


if __name__ == "__main__":
    main()
