"""VGG-19 from keras.applications, compared against the ResNets in covid_from_ctscan.

``image`` → ``to_rgb`` → ``imagenet_preprocess`` (caffe mode, as ``vgg19.preprocess_input``) → VGG19
base → global average pool → Dense(128, relu) → Dense(num_classes): the same head as ``resnet50`` so
the two bases are compared on equal terms.

Reference:
    Simonyan and Zisserman. "Very Deep Convolutional Networks for Large-Scale Image Recognition",
    ICLR 2015, arXiv:1409.1556.
"""

from __future__ import annotations

from covidct.models._common import application_classifier
from covidct.models.registry import ModelSpec, register_model


def build_vgg19(input_shape, num_classes: int, weights=None, *, freeze_backbone: bool = False):
    """Build keras.applications VGG19 with a Dense(128) → logits head.

    Args:
        input_shape: ``(H, W, C)`` with C in {1, 3}, values in [0, 255]; H, W at least 32.
        num_classes: number of logits.
        weights: None, ``"imagenet"`` or a local ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``.
        freeze_backbone: keep the base fixed.

    Returns:
        An uncompiled Functional ``keras.Model`` producing logits.
    """
    return application_classifier(
        "vgg19",
        "VGG19",
        input_shape,
        num_classes,
        weights,
        preprocess_mode="caffe",
        weights_file="vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        hidden=(128,),
        freeze_backbone=freeze_backbone,
    )


register_model(
    ModelSpec(
        name="vgg19",
        builder=build_vgg19,
        task="classification",
        family="vgg",
        input_shape=(224, 224, 1),
        gradcam_layer="block5_conv4",
        reference="Simonyan & Zisserman 2015, arXiv:1409.1556; compared in covid_from_ctscan",
        imagenet_weights=True,
        description="keras.applications VGG19 + Dense(128) head",
        test_input_shape=(32, 32, 1),
    )
)
