"""Research protocols on top of training and evaluation: grouped cross-validation to choose a recipe.

- ``rounds``: the recipe candidates (config overrides) and the rounds that compare them, each with its base.
- ``folds``: the non-test rows of a config, grouped folds over them, a fold's training data.
- ``oof``: out-of-fold predictions pooled over the folds and their scores (CIs over groups).
- ``selection``: the fixed selection rule and the paired bootstrap of a candidate minus the base.
- ``ensembles``: seed ensembles (averaged probabilities), patient tables, internal and external scores.
- ``cv``: the protocol itself (train every candidate on every fold, score, choose); ``covidct cv`` runs it.

The protocol and its reading are described in ``docs/experiments.md``.
"""
