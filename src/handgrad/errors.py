"""Errors that mean 'the user's input is wrong', which the CLI prints as one line."""


class DataError(ValueError):
    """A data file or data set that cannot be read as expected; the message names the file."""


class GradientCheckError(RuntimeError):
    """The hand-written gradients disagree with autograd; training would be meaningless."""


class UsageError(ValueError):
    """The command was used wrongly (a missing file, a class that is not a Module, ...): exit code 2."""


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or gradient, divergence): said in one line."""
