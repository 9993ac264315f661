"""The one exception type the command line turns into a one-line message, and the one way to
quote another exception in such a line."""


class MlipdivError(Exception):
    """A user-facing error: bad input, impossible request, or a failed external step.

    The message must name the file/molecule/option concerned and the reason, in one line.
    """


def first_line(exc: BaseException, with_type: bool = False) -> str:
    """The first non-empty line of an exception's message (its type name when it has none);
    never raises, whatever `str(exc)` does."""
    try:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    except Exception:  # a broken __str__ must not hide the error it describes
        lines = []
    name = type(exc).__name__
    if not lines:
        return name
    return f"{name}: {lines[0]}" if with_type else lines[0]


class FieldError(MlipdivError):
    """A bad value of one named parameter. The library names it as its API does (`size`,
    `split.sf`, `budget`: a config key where there is one); the command line renders the
    field as its flag (`--size`, `--sf`, `--budget`) and the study config as its key."""

    def __init__(self, field: str, value: object, reason: str):
        self.field, self.value, self.reason = field, value, reason
        super().__init__(self.render(field))

    def __reduce__(self):
        # crosses process boundaries intact: a cell's error raised in a pool worker must come
        # back as this error, not break the pool while the parent unpickles it
        return type(self), (self.field, self.value, self.reason)

    def render(self, name: str) -> str:
        """The message with the parameter called `name`."""
        value = "" if self.value is None else f" {self.value}"
        return f"{name}{value}: {self.reason}"

    def as_flag(self) -> str:
        """The message as the command line says it: `--last-part-of-the-field`."""
        return self.render("--" + self.field.rsplit(".", 1)[-1].replace("_", "-"))


# numpy's (and RDKit's) seeds are unsigned 32-bit integers
SEED_LIMIT = 2 ** 32


def check_seed(value: int, field: str = "seed") -> int:
    """`value` when it is a seed numpy accepts (0 <= seed < 2**32), else a FieldError."""
    if not 0 <= value < SEED_LIMIT:
        raise FieldError(field, value, "must be 0 <= seed < 2**32")
    return value
