"""Errors in what the user gave (config values, paths, files, datasets), as opposed to bugs.

Library code raises these with a message that names the problem and the fix; every command-line
tool prints such a message as one line and exits with status 2 (`cli.run`), while any other
exception keeps its traceback. Each class also derives from the builtin exception a caller would
expect (ValueError, FileNotFoundError, ...), so `except ValueError` still catches them.
"""


class UserError(Exception):
  """A problem with the user's input; the message says what is wrong and how to fix it."""


class InvalidValueError(UserError, ValueError):
  """A config value, flag, file or dataset that cannot be used as given."""


class PathNotFoundError(UserError, FileNotFoundError):
  """A file or folder the user named does not exist (or lacks what it should hold)."""


class PathExistsError(UserError, FileExistsError):
  """An output that would overwrite something the user keeps."""


class CheckpointError(UserError, ValueError):
  """A checkpoint that cannot be restored (damaged files)."""


class WorkdirBusyError(UserError, RuntimeError):
  """Another live run writes into the workdir."""


class DivergedError(UserError, FloatingPointError):
  """Training produced a non-finite loss (the checkpoints are kept)."""


class MissingPackageError(UserError, ImportError):
  """An optional package is not installed; the message says how to install it."""
