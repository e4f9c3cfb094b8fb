"""Warnings avec raises when a result may not mean what the user thinks (filter them by class)."""


class NonFiniteWarning(RuntimeWarning):
    """A run's logits hold NaN or inf (an intervention blew up the residual stream, or overflow)."""


class UnusedInterventionWarning(UserWarning):
    """An intervention inside ``Model.intervene`` edited no token in any forward pass of the block."""
