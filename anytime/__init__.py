"""Measuring, evaluating and cataloguing the sub-networks of a nested net,
and their early-exit policies."""
