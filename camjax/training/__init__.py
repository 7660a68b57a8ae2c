"""Training and refinement: the model state, the steps, the flat loops and
what they share, optimizers, and progress logging."""
