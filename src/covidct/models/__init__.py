"""Model registry and every architecture of the study.

Adding a model: write ``models/<family>.py`` that calls ``register_model(ModelSpec(...))`` and add one
line naming it in the family import below (see CONTRIBUTING.md).
"""

# One line per model family: importing a family module registers its models. The list is explicit,
# so registration never depends on hidden side effects elsewhere.
from covidct.models import (  # noqa: F401
    bcd_unet,
    bit,
    cnn3d,
    efficientnet,
    efficientnet_lite,
    inception,
    masked_efficientnet,
    resnet,
    simple_cnn,
    transfusion,
    unet,
    vgg,
)
from covidct.models.registry import (
    ModelSpec,
    build_model,
    builder_options,
    get_spec,
    list_models,
    register_model,
)

__all__ = ["ModelSpec", "build_model", "builder_options", "get_spec", "list_models", "register_model"]
