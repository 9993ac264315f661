"""The one exception type the command line turns into a one-line message."""


class MlipdivError(Exception):
    """A user-facing error: bad input, impossible request, or a failed external step.

    The message must name the file/molecule/option concerned and the reason, in one line.
    """
