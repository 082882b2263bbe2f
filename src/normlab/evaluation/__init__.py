"""Evaluating a trained net beyond eval mode: PreciseBN's population statistics and
batch-statistics accuracy. Algorithms on plain ``nn.Module``s; the Lightning callback that calls
them after training is ``normlab.training.callbacks.AfterTraining``."""
