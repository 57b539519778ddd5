"""The signatures of llm_meter's wrappers around SDK callables: the SDK's own, plus our keywords.

Drop-in ``__init__`` / ``copy`` methods and the resource methods that take ``customer=`` are
wrappers; ``inspect.signature``, ``typing.get_type_hints`` and IDEs must still see every SDK
argument (new releases add some) and ours. Shared by every provider adapter.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Final

from .._meter import Meter

__all__ = ["CUSTOMER_PARAMS", "METER_PARAM", "extend_signature"]

CUSTOMER_PARAMS: Final = (
    inspect.Parameter("customer", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=str | None),
    inspect.Parameter("customer_id", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=str | None),
)
METER_PARAM: Final = inspect.Parameter(
    "meter", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Meter | None
)


def extend_signature(wrapper: Any, func: Any, extra: tuple[inspect.Parameter, ...]) -> Any:
    """Give *wrapper* the SDK *func*'s name, docs, signature and type hints, plus *extra*.

    Parameters *func* already has keep the SDK's definition; ours go before its ``**kwargs``.
    """
    functools.update_wrapper(wrapper, func)
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return wrapper
    params = list(sig.parameters.values())
    names = {p.name for p in params}
    var_kw = [p for p in params if p.kind is p.VAR_KEYWORD]
    rest = [p for p in params if p.kind is not p.VAR_KEYWORD]
    ours = [p for p in extra if p.name not in names]
    wrapper.__signature__ = sig.replace(parameters=[*rest, *ours, *var_kw])
    annotations = dict(getattr(func, "__annotations__", {}))
    ret = annotations.pop("return", inspect.Parameter.empty)
    for p in ours:
        annotations[p.name] = p.annotation
    if ret is not inspect.Parameter.empty:
        annotations["return"] = ret
    wrapper.__annotations__ = annotations
    return wrapper
