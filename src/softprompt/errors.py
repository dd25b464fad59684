"""One exception type for user-facing problems: the CLI prints it as one line, never a traceback."""


class SoftPromptError(Exception):
    """A problem with the user's input (file, field, value) that the user can fix."""
