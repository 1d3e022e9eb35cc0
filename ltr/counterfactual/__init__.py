"""Counterfactual evaluation from impression logs: position propensities and offline engagement estimates."""
