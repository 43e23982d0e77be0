"""Model registry and every architecture of the study.

Adding a model: write ``models/<family>.py`` that calls ``register_model(ModelSpec(...))`` and add one
import line below (see CONTRIBUTING.md).
"""

from covidct.models.registry import ModelSpec, build_model, get_spec, list_models, register_model

# One import line per model family (explicit, so registration never depends on hidden side effects).

__all__ = ["ModelSpec", "build_model", "get_spec", "list_models", "register_model"]
