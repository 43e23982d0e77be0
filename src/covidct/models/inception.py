"""InceptionResNetV2 from keras.applications (the transfer-learning study's frozen feature extractor).

``image`` → ``to_rgb`` → ``imagenet_preprocess`` (tf mode: x / 127.5 - 1, exactly
``inception_resnet_v2.preprocess_input``) → InceptionResNetV2 base → ``global_avg_pool`` (the 1536
features the transfer-learning study (Covid Classification and Opacification using Transfer Learning) fed to classical classifiers; take them with
``keras.Model(model.input, model.get_layer("global_avg_pool").output)``) → Dense(num_classes).

The base's valid-padded stem needs inputs of at least 75x75 px; smaller inputs raise a CovidctError
before Keras is called.

Reference:
    Szegedy, Ioffe, Vanhoucke, Alemi. "Inception-v4, Inception-ResNet and the Impact of Residual
    Connections on Learning", AAAI 2017, arXiv:1602.07261.
"""

from __future__ import annotations

from covidct.models._common import application_classifier
from covidct.models.registry import ModelSpec, register_model

MIN_SIZE = 75


def build_inception_resnet_v2(input_shape, num_classes: int, weights=None, *, freeze_backbone: bool = False):
    """Build keras.applications InceptionResNetV2 with a GAP → Dense logits head.

    Args:
        input_shape: ``(H, W, C)`` with C in {1, 3}, values in [0, 255]; H, W at least 75.
        num_classes: number of logits.
        weights: None, ``"imagenet"`` or a local
            ``inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5``.
        freeze_backbone: keep the base fixed (the transfer-learning study used frozen features).

    Returns:
        An uncompiled Functional ``keras.Model`` producing logits.
    """
    return application_classifier(
        "inception_resnet_v2",
        "InceptionResNetV2",
        input_shape,
        num_classes,
        weights,
        preprocess_mode="tf",
        weights_file="inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        freeze_backbone=freeze_backbone,
        min_size=MIN_SIZE,
    )


register_model(
    ModelSpec(
        name="inception_resnet_v2",
        builder=build_inception_resnet_v2,
        task="classification",
        family="inception",
        input_shape=(299, 299, 1),
        gradcam_layer="conv_7b_ac",
        reference="Szegedy et al. 2017, arXiv:1602.07261; frozen features in Covid Classification and Opacification using Transfer Learning",
        imagenet_weights=True,
        description="keras.applications InceptionResNetV2 + GAP + Dense; min input 75 px",
        test_input_shape=(75, 75, 1),
    )
)
