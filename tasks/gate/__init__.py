"""Judgement: a model evaluated on the evaluation split (accuracy, per-class recall,
batch-1 latency, size), models timed side by side, and the release gates that compare a variant
with its baseline."""
