"""Value checks shared by every recipe section: the few rules pydantic's types do not say themselves.

Why: a failed check must read as medsft's one line ("lora.dropout must be in [0, 1) (got 1.5)"), so each
rule carries its own message, optionally followed by " — fix".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from medsft.paths import user_path

V = TypeVar("V")


def rule(test: Callable[[Any], bool], text: str) -> AfterValidator:
    """A value check whose failure message is ours ("must be …", optionally "— fix")."""
    def check(value: V) -> V:
        if value is not None and not test(value):
            raise ValueError(text)
        return value
    return AfterValidator(check)


def no_bool(value: V) -> V:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


Int = Annotated[int, BeforeValidator(no_bool)]
Float = Annotated[float, BeforeValidator(no_bool)]
PositiveInt = Annotated[Int, rule(lambda v: v > 0, "must be a positive integer")]
Fraction = Annotated[Float, rule(lambda v: 0 <= v < 1, "must be in [0, 1)")]
Text = Annotated[str, rule(lambda v: bool(v.strip()), "must be a non-empty string")]
PathText = Annotated[Text, AfterValidator(user_path)]
Label = Annotated[Text, BeforeValidator(lambda v: str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)]


class Section(BaseModel):
    """A recipe section: unknown keys refused, no NaN or infinity, immutable once built."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)
