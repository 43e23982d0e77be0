"""BatchNormalization helpers of the training path: momentum override and "precise BN" recalibration.

Keras keeps BatchNorm's running mean and variance as an exponential average of the batch statistics
seen during training. Those batches come from older weights, from augmented images and from
activations perturbed by dropout; at inference the layer then normalises clean activations with
statistics of a different distribution. In this toolkit's runs that shifted every prediction towards
one class while the ranking stayed good: ``cnn3d_covidscan`` on phantom volumes (Dropout 0.5 before
Conv3D + MaxPool: max-pooling dropout-amplified activations raises the next BN's mean from 0.32 to
0.55) scored test AUC 0.966 but argmax macro-F1 0.333, and ``small_cnn`` on sars-cov-2-ct test AUC
0.968 but macro-F1 0.358. Recomputing the statistics with the final weights on clean training inputs
(``recalibrate_batch_norm``) gave macro-F1 0.900 and 0.905 on the same checkpoints (BENCHMARKS.md,
"BatchNorm recalibration").

Reference: Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021, arXiv:2105.07576 (precise BN).
"""

from __future__ import annotations

import keras
import numpy as np


def all_layers(container):
    """Every layer below ``container`` (depth first, nested models included)."""
    for layer in getattr(container, "layers", []):
        yield layer
        yield from all_layers(layer)


def set_batch_norm_momentum(model, momentum: float) -> int:
    """Set the momentum of every BatchNormalization layer, also inside nested models; returns how many."""
    changed = 0
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(momentum)
            changed += 1
    return changed


def recalibration_rows(indices, n: int, seed: int) -> np.ndarray:
    """The training rows whose statistics recalibrate BatchNorm: ``n`` of ``indices`` drawn by ``seed``, sorted."""
    indices = np.asarray(indices, dtype=np.int64)
    if n <= 0 or len(indices) == 0:
        return indices[:0]
    if n >= len(indices):
        return np.sort(indices)
    return np.sort(np.random.default_rng([seed, 7919]).choice(indices, size=n, replace=False))


def recalibrate_batch_norm(model, batches, compiled: bool = True) -> int:
    """Replace the running statistics of every trainable BatchNorm layer by their mean over ``batches``.

    Each batch is run through ``model`` in training mode with momentum 0 (the layer's running
    statistics become that batch's) and dropout rate 0 (clean activations); the per-batch means and
    variances are averaged with the batch sizes as weights, then assigned. Layers that are not
    trainable (a frozen backbone) keep their statistics: Keras runs them in inference mode anyway.
    Momenta and dropout rates are restored afterwards; on error the old statistics are too.

    Args:
        model: a built Keras model.
        batches: iterable of model inputs (an array, or a dict of arrays for multi-input models),
            without augmentation.
        compiled: run the passes as one compiled function (``jax.jit`` / ``tf.function``; PyTorch runs
            eagerly either way) instead of an eager ``model(x, training=True)``, which on JAX dispatches
            op by op (a U-Net pass took a good part of a second on an H100). Same numbers either way.

    Returns:
        The number of batches used (0: nothing to recalibrate or no batches; statistics unchanged).
    """
    norms = [
        layer
        for layer in all_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if not norms:
        return 0
    dropouts = [layer for layer in all_layers(model) if isinstance(layer, keras.layers.Dropout)]
    momenta = [layer.momentum for layer in norms]
    rates = [layer.rate for layer in dropouts]
    originals = [(keras.ops.convert_to_numpy(n.moving_mean), keras.ops.convert_to_numpy(n.moving_variance)) for n in norms]
    sums = [[0.0, 0.0] for _ in norms]
    seen, used = 0, 0
    try:
        for layer in norms:
            layer.momentum = 0.0
        for layer in dropouts:
            layer.rate = 0.0
        forward = _batch_statistics_function(model, norms, compiled)
        for x in batches:
            rows = len(next(iter(x.values())) if isinstance(x, dict) else x)
            for total, (mean, variance) in zip(sums, forward(x)):
                total[0] = total[0] + rows * np.asarray(mean, dtype="float64")
                total[1] = total[1] + rows * np.asarray(variance, dtype="float64")
            seen += rows
            used += 1
    except BaseException:  # an interrupted pass leaves one batch's statistics: put the old ones back
        for (mean, variance), layer in zip(originals, norms):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)
        raise
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum
        for layer, rate in zip(dropouts, rates):
            layer.rate = rate
    if seen:
        for (mean, variance), layer in zip(sums, norms):
            layer.moving_mean.assign((mean / seen).astype(layer.moving_mean.dtype))
            layer.moving_variance.assign((variance / seen).astype(layer.moving_variance.dtype))
    return used


def _batch_statistics_function(model, norms, compiled: bool):
    """``f(x) -> [(mean, variance) per layer of norms]``: one training-mode pass with momentum 0.

    With momentum 0 a BatchNorm layer's running statistics after the pass are exactly the statistics of
    that batch. The compiled functions read momentum and dropout rates when they are traced; they are
    cached on the model and used only inside ``recalibrate_batch_norm``, where both are always 0.
    """
    backend = keras.backend.backend()
    # Traced code bakes in which layers are trainable (a frozen BatchNorm runs in inference mode): a cached
    # function is reused only for the same set of recalibrated layers (it changes when a backbone thaws).
    key = (backend, tuple(id(layer) for layer in norms))
    cached = getattr(model, "_covidct_bn_statistics", None)
    step = cached[1] if cached is not None and cached[0] == key else None
    if compiled and backend == "jax":
        import jax

        variables = model.non_trainable_variables
        positions = [
            (_position(variables, layer.moving_mean), _position(variables, layer.moving_variance)) for layer in norms
        ]
        if step is None:

            def statistics(trainable, non_trainable, x):
                _, updated = model.stateless_call(trainable, non_trainable, x, training=True)
                return updated

            step = jax.jit(statistics)
            model._covidct_bn_statistics = (key, step)

        def forward(x):
            updated = step(
                [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables], x
            )
            return [(np.asarray(updated[m]), np.asarray(updated[v])) for m, v in positions]

        return forward
    if compiled and backend == "tensorflow":
        import tensorflow as tf

        if step is None:
            step = tf.function(lambda x: model(x, training=True), reduce_retracing=True)
            model._covidct_bn_statistics = (key, step)

        def forward(x):
            step(x)
            return [
                (keras.ops.convert_to_numpy(layer.moving_mean), keras.ops.convert_to_numpy(layer.moving_variance))
                for layer in norms
            ]

        return forward

    def forward(x):
        model(x, training=True)
        return [
            (keras.ops.convert_to_numpy(layer.moving_mean), keras.ops.convert_to_numpy(layer.moving_variance))
            for layer in norms
        ]

    return forward


def _position(variables, target) -> int:
    for index, variable in enumerate(variables):
        if variable is target:
            return index
    raise ValueError(f"BatchNorm variable {target.path} is not among the model's non-trainable variables")


__all__ = ["all_layers", "set_batch_norm_momentum", "recalibration_rows", "recalibrate_batch_norm"]
