"""The one exception type the CLI turns into a single line and a non-zero exit."""


class HarnessError(Exception):
    """A problem with the user's input or environment, phrased as `what is wrong; how to fix it`.

    Anything raised as HarnessError is shown to the user without a traceback (unless --debug),
    so its message must name the problem and the fix on its own.
    """
