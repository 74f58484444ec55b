"""The one exception type for problems a user can fix (the shared checks that raise it: `emseg_rt.checks`)."""


class EmsegError(Exception):
    """A problem the user can fix: the message names the file or option and says what to do.

    The CLI prints it as one line on stderr and exits with code 2. Any other exception is a bug.
    """
