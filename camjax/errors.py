"""User-facing errors: anything the user can fix (config, paths, checkpoints,
corrupt files) raises one of these, and `camjax.main` prints it as one line
and exits with status 2 instead of a traceback."""


class CamjaxError(Exception):
    """A problem with the user's input, reported as a single line."""


class ConfigError(CamjaxError):
    """An invalid config field; the message names the field."""
