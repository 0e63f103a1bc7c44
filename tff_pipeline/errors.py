"""Exceptions that the binaries turn into one-line messages.

Every error a user can cause (a bad flag, a bad file, an unwritable directory)
is raised as a `PipelineError` subclass whose message names the flag or file
and says what was expected. The binaries print `error: <message>` and exit
non-zero; they never show a traceback for these.
"""


class PipelineError(Exception):
  """Base class for errors that are reported to the user in one line."""

  exit_code: int = 1


class UsageError(PipelineError):
  """A flag value, or a combination of flags, is invalid."""

  exit_code = 2


class DataError(PipelineError):
  """A data file is missing, unreadable, corrupt, or not what was expected."""

  exit_code = 2


class OutputError(PipelineError):
  """The output directory cannot be created or written."""

  exit_code = 2


class CheckpointError(PipelineError):
  """A checkpoint cannot be used to resume this run."""

  exit_code = 2


class TrainingError(PipelineError):
  """Training cannot continue, e.g. the global model became non-finite."""

  exit_code = 3


class RuntimeUnavailableError(PipelineError):
  """A TFF worker process is unreachable or died."""

  exit_code = 4


class Interrupted(PipelineError):
  """The run was stopped by SIGINT or SIGTERM."""

  exit_code = 130
