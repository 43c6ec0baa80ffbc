"""Evaluation: metrics (tensor in, number out), datasets and sampling at scale."""
