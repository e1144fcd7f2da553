"""Errors that mean 'the user's input is wrong', which the CLI prints as one line."""


class DataError(ValueError):
    """A data file or data set that cannot be read as expected; the message names the file."""


class GradientCheckError(RuntimeError):
    """The hand-written gradients disagree with autograd; training would be meaningless."""


class UsageError(ValueError):
    """The command was used wrongly (a missing file, a class that is not a Module, ...): exit code 2."""


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or gradient, divergence): said in one line."""


class NotReplayableError(RuntimeError):
    """A Module without `bwd` whose forward applies a torch operation to the computation: its backward cannot be
    the replay of its sub-calls (write its bwd, or use a handgrad layer for the operation): exit code 2."""
