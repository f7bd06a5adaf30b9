"""Part A: the 5-block CNN trained from scratch, every knob from the run config.

Conv blocks conv1..conv5 (each: conv, optional batch norm, a separate activation layer act1..act5,
2x2 max-pool), then a dense layer, dropout and the softmax output. The input is float32 RGB in
[0, 255], rescaled inside the model. `inat.models.flops` counts its parameters and computations in
closed form; guided backprop (`inat.figures.guided`) finds the activations by name.
"""

from __future__ import annotations

import keras
from keras import layers


def l2(cfg):
    # Weight decay as Keras's L2 penalty (factor * sum(w**2) added to the loss) on every kernel we
    # create; biases and BN parameters are not decayed, the usual choice.
    return keras.regularizers.L2(cfg.weight_decay) if cfg.weight_decay > 0 else None



def scratch_model(cfg, n_classes: int, synchronized: bool = False) -> keras.Model:
    s = cfg.image_size
    inputs = keras.Input((s, s, 3), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i, (filters, kernel) in enumerate(zip(cfg.filt_org, cfg.kernel_size), start=1):
        # "same" padding keeps the side at s, s/2, s/4, ... whatever the kernel, so any kernel size
        # the config allows works at any image size >= 32 (with "valid", 11x11 kernels at 64 px
        # would shrink the map to nothing after a few blocks).
        # With batch norm the conv bias is dropped: BN subtracts the mean and adds its own beta, so a
        # bias would be a dead parameter. flops.py counts parameters the same way.
        x = layers.Conv2D(
            filters,
            kernel,
            padding="same",
            use_bias=not cfg.batch_norm,
            kernel_regularizer=l2(cfg),
            name=f"conv{i}",
        )(x)
        if cfg.batch_norm:
            # Momentum 0.9, not Keras's 0.99: the moving statistics used at evaluation must catch
            # up within an epoch or two (a few hundred steps on small data), or validation and test
            # accuracy read near chance while training accuracy climbs.
            x = layers.BatchNormalization(momentum=0.9, synchronized=synchronized, name=f"bn{i}")(x)
        # A separate Activation layer (not `Conv2D(activation=...)`): guided backprop finds the
        # activations by name (act1..act5) and replaces their gradient.
        x = layers.Activation(cfg.activation, name=f"act{i}")(x)
        # Pool size 2, "valid": odd sides are floored (97 -> 48), which flops.py assumes too.
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(cfg.num_dense, kernel_regularizer=l2(cfg), name="dense")(x)
    x = layers.Activation(cfg.activation, name="dense_act")(x)
    x = layers.Dropout(cfg.dropout, name="dropout")(x)
    # float32 whatever the dtype policy: under mixed precision the softmax and the loss stay exact.
    outputs = layers.Dense(
        n_classes, activation="softmax", kernel_regularizer=l2(cfg), name="predictions", dtype="float32"
    )(x)
    return keras.Model(inputs, outputs, name="scratch_cnn")
