"""Repair: sparse prune-and-regrow fine-tuning, the detector G and the apply pipeline.

The fine-tuning is seeded by a learned mask; the pipeline turns a suspect model B into the
repaired B' and G.
"""
