r"""Make the small Keras files and reference outputs that tests/models/test_keras_layers.py reads.

Runs in a side environment with TensorFlow, not in ONP's (CI never runs it)::

    python -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu==2.21.0 tf-keras==2.21.0
    /tmp/tfenv/bin/python benchmarks/keras_reference.py --keras 3 --out tests/data/keras
    TF_USE_LEGACY_KERAS=1 /tmp/tfenv/bin/python benchmarks/keras_reference.py --keras 2 \\
        --out tests/data/keras

For each model it writes every layout that Keras version saves (``<model>-k<N>-full.h5``,
``-weights.h5`` with ``.json``, and for Keras 3 ``.keras``) and ``<model>-k<N>.npz`` holding the
input images ``x`` (``[B, H, W, C]`` in ``[0, 1]``) and Keras's outputs ``softmax`` for them (for
``preprocessing``, a model with Rescaling at its input, Keras is fed ``255 * x``).
The models together use every layer class that ONP's Keras importer supports.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

SEED = 0
IMAGES = 6


def keras_module(version: int):  # noqa: ANN201 - keras or tf_keras, whichever is asked for
    if version == 2:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        import tf_keras as keras
    else:
        import keras
    return keras


def every_layer_model(keras):  # noqa: ANN001, ANN201
    """A functional model using each supported layer class at least once."""
    layers = keras.layers
    image = keras.Input((11, 10, 3))
    x = layers.ZeroPadding2D(((1, 0), (2, 1)))(image)
    x = layers.Conv2D(6, 3, strides=2, padding="same", activation="relu")(x)
    a = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False)(x)
    a = layers.BatchNormalization()(a)
    a = layers.Activation("tanh")(a)
    b = layers.Conv2D(12, 1, groups=2, padding="valid")(x)
    b = layers.ReLU(max_value=6.0)(b)
    x = layers.Add()([a, b])
    x = layers.LeakyReLU()(x)
    x = layers.MaxPooling2D(2, padding="same")(x)
    x = layers.Conv2D(8, 2, dilation_rate=2, padding="same", activation="elu")(x)
    x = layers.AveragePooling2D(2, strides=1, padding="same")(x)
    c = layers.Conv2D(8, 3, padding="valid", activation="sigmoid")(x)
    c = layers.Multiply()([c, c])
    m = layers.SpatialDropout2D(0.2)(c)
    g = layers.GlobalAveragePooling2D()(m)
    h = layers.GlobalMaxPooling2D()(x)
    f = layers.Flatten()(x)
    f = layers.Dense(7, activation="swish")(f)
    v = layers.Concatenate()([g, h, f])
    v = layers.BatchNormalization(center=False)(v)
    v = layers.Dropout(0.5)(v)
    v = layers.Dense(9)(v)
    out = layers.Softmax()(v)
    return keras.Model(image, out)


def sequential_model(keras):  # noqa: ANN001, ANN201
    """A plain Sequential CNN: valid convs, pools, Flatten -> Dense on an uneven map."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input((12, 9, 1)),
        layers.Conv2D(4, (3, 2), activation="relu"),
        layers.MaxPooling2D((2, 2), strides=(1, 2)),
        layers.BatchNormalization(scale=False),
        layers.AveragePooling2D(2),
        layers.ELU(alpha=0.7),
        layers.Flatten(),
        layers.Dropout(0.1),
        layers.Dense(16, activation="relu"),
        layers.Dense(5, activation="softmax"),
    ])


def preprocessing_model(keras):  # noqa: ANN001, ANN201
    """Rescaling and an adapted Normalization at the input: the model is fed raw 0-255 pixels."""
    layers = keras.layers
    normalization = layers.Normalization()
    normalization.adapt(np.random.default_rng(SEED).normal((0.2, -0.1, 0.4), (0.3, 0.5, 0.2),
                                                           (64, 7, 7, 3)).astype("float32"))
    return keras.Sequential([
        keras.Input((7, 7, 3)),
        layers.Rescaling(1 / 127.5, offset=-1.0),
        normalization,
        layers.Conv2D(5, 3, activation="relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(4, activation="softmax"),
    ])


def randomize_batchnorm(model, rng) -> None:  # noqa: ANN001
    """Give every BatchNormalization non-trivial moving statistics (fresh ones are 0 and 1)."""
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                               if "variance" in v.name or "gamma" in v.name else
                               rng.normal(0, 0.3, w.shape).astype("float32")
                               for w, v in zip(layer.get_weights(), layer.weights, strict=True)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keras", type=int, choices=(2, 3), required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    keras = keras_module(args.keras)
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, build in (("every_layer", every_layer_model), ("sequential", sequential_model),
                        ("preprocessing", preprocessing_model)):
        model = build(keras)
        randomize_batchnorm(model, rng)
        stem = args.out / f"{name}-k{args.keras}"
        shape = model.input_shape[1:]
        x = rng.uniform(0, 1, (IMAGES, *shape)).astype("float32")
        if name == "preprocessing":  # the model is fed raw pixels; x stays in [0, 1] in the npz
            np.savez_compressed(f"{stem}.npz", x=x, softmax=model.predict(x * 255, verbose=0),
                                keras_version=keras.__version__)
        else:
            np.savez_compressed(f"{stem}.npz", x=x, softmax=model.predict(x, verbose=0),
                                keras_version=keras.__version__)
        model.save(f"{stem}-full.h5")
        weights = f"{stem}-weights.h5" if args.keras == 2 else f"{stem}.weights.h5"
        model.save_weights(weights)
        Path(f"{stem}.json").write_text(json.dumps(json.loads(model.to_json())) + "\n")
        if args.keras == 3:
            model.save(f"{stem}.keras")
        print(f"{stem}: keras {keras.__version__}, input {shape}")


if __name__ == "__main__":
    main()
