"""JSON request bodies, read before FastAPI validates them element by element.

A route of ``checked_route(shape)`` reads its body itself: parsed by orjson
(in a worker thread when it is over ``BIG_BODY`` bytes, so the event loop
stays free), with the standard library as the fallback that keeps the
answers of a body orjson refuses (``NaN``, nesting, a number out of range)
as they were; a body that is not UTF-8 is refused whatever its declared
charset. Then ``shape`` checks counts and sizes -- queries per request,
values per input, characters per text, ids per what-if, unknown fields, the
query form the served store takes -- each a 422 naming the field, before
pydantic looks at any element: a megabyte of ``[1,1,1,...]`` is one error,
not half a million. What passes is handed to FastAPI as the parsed body
(``Request._json``), so nothing is parsed twice.

Everything here is O(number of fields at the top two levels) and bounded by
``max_queries``; the error answer of what pydantic still refuses is bounded
too (``service.errors``: the first ``MAX_FIELD_ERRORS`` fields and a count).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import orjson
from fastapi import Request
from fastapi.routing import APIRoute

from .errors import invalid
from .settings import Settings

BIG_BODY = 64 * 1024  # bytes: parsed and checked in a worker thread above this
PREPARE_OFF_LOOP = 8 * 1024  # bytes: queries encoded (texts tokenized: ~0.4 us a character) in a thread above this

_VECTOR_FIELDS = ("input", "target", "client_id")
_TEXT_FIELDS = ("text", "pretokenized", "client_id")
_PROMPT_FIELDS = ("prompt", "completion", "pretokenized", "client_id")
_ATTRIBUTION_FIELDS = ("queries", "top_k", "granularity", "output", "order", "record", "per_token", "token_top_k")
_WHATIF_FIELDS = ("queries", "sample", "remove", "weights", "output")
_INPUT_CAP = 1_000_000  # values of one input before a store is loaded (the schema's own cap)
_TEXT_FORMS = 'a text store (kind {}) takes {{"text": "..."}} or {{"prompt": "...", "completion": "..."}}'
_VECTOR_FORM = 'a classifier store (kind {}) takes numeric queries {{"input": [...]}}'


def _int(text: str) -> int | float:
    """A JSON integer; one beyond any float (more than 308 digits) as ±inf,
    so that the field it stands in names it (Python refuses to read more
    than 4,300 digits at all, and a 400-digit int overflows a float field)."""
    if len(text.lstrip("-")) > 308:
        return float("-inf") if text.startswith("-") else float("inf")
    return int(text)


def parse(raw: bytes):
    """The JSON value of ``raw``; a 422 naming ``body`` when it is not JSON
    or not UTF-8 (the reasons of ``service.errors``)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:  # what orjson refuses but the schema should name (NaN, 1e999, huge integers), and the exact reason otherwise
        return json.loads(raw.decode("utf-8"), parse_int=_int)
    except UnicodeDecodeError:
        raise invalid("body", "body is not valid UTF-8") from None
    except RecursionError:
        raise invalid("body", "invalid JSON: nesting too deep") from None
    except json.JSONDecodeError as e:
        if b"\x00" in raw[:4] or raw[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 / UTF-32 (ASCII with NULs)
            raise invalid("body", "body is not valid UTF-8") from None
        raise invalid("body", f"body is not valid JSON (at character {e.pos})") from None


def _unknown(obj: dict, allowed: tuple[str, ...], at: str) -> None:
    for k in obj:
        if k not in allowed:
            extra = sum(1 for x in obj if x not in allowed)
            raise invalid(f"{at}{str(k)[:100]}", "unknown field" + (f" (and {extra - 1} more)" if extra > 1 else "")
                          + f"; expected {', '.join(allowed)}")


def _query(q, i: int, form, in_dim: int | None, s: Settings) -> None:
    """One query's form and sizes for the served store's ``form``
    (``service.forms.Form``; None: not loaded yet)."""
    if not isinstance(q, dict):
        return  # the schema names it (one error)
    at = f"queries[{i}]"
    is_text = "text" in q or "prompt" in q or "completion" in q
    if form is not None and form.text:
        forms = _TEXT_FORMS.format(form.name)
        if "input" in q:
            raise invalid(f"{at}.input", f"{forms}, not numbers")
        if not is_text:
            raise invalid(f"{at}.text", f"required: {forms}")
        if "text" in q and ("prompt" in q or "completion" in q):
            raise invalid(f"{at}.text", f"{forms}: one of the two forms, not both")
        _unknown(q, _TEXT_FIELDS if "text" in q else _PROMPT_FIELDS, f"{at}.")
    elif form is not None and is_text:
        field = "text" if "text" in q else "prompt" if "prompt" in q else "completion"
        raise invalid(f"{at}.{field}", f"{_VECTOR_FORM.format(form.name)}, not text")
    elif "input" in q or not is_text:
        _unknown(q, _VECTOR_FIELDS, f"{at}.")
    else:
        _unknown(q, _TEXT_FIELDS if "text" in q else _PROMPT_FIELDS, f"{at}.")
    x = q.get("input")
    if isinstance(x, list):
        want = in_dim
        if want is not None and len(x) != want:
            raise invalid(f"{at}.input", f"expected {want} values, got {len(x)}")
        if len(x) > _INPUT_CAP:
            raise invalid(f"{at}.input", f"at most {_INPUT_CAP} values")
    chars = sum(len(q[f]) for f in ("text", "prompt", "completion") if isinstance(q.get(f), str))
    if chars > s.max_text_chars:
        fields = ["text"] if "text" in q else [f for f in ("prompt", "completion") if f in q]
        raise invalid(f"{at}.{fields[0]}", f"at most {s.max_text_chars} characters per query, got {chars}")


def _queries(obj: dict, served, s: Settings) -> None:
    qs = obj.get("queries")
    if not isinstance(qs, list):
        return
    if len(qs) > s.max_queries:
        raise invalid("queries", f"at most {s.max_queries} queries per request, got {len(qs)}")
    form = served.form if served is not None else None
    in_dim = served.att.spec.in_dim if form is not None and not form.text else None
    for i, q in enumerate(qs):
        _query(q, i, form, in_dim, s)


def attribution_shape(obj, served, s: Settings) -> None:
    """``POST /v1/attributions``: counts, sizes and the query form, before the schema."""
    if not isinstance(obj, dict):
        raise invalid("body", "expected a JSON object")
    _unknown(obj, _ATTRIBUTION_FIELDS, "")
    _queries(obj, served, s)


def whatif_shape(obj, served, s: Settings) -> None:
    """``POST /v1/whatif``: as for attributions, and at most one entry per
    source of the store in ``remove`` and ``weights``."""
    if not isinstance(obj, dict):
        raise invalid("body", "expected a JSON object")
    _unknown(obj, _WHATIF_FIELDS, "")
    _queries(obj, served, s)
    n = len(served.att.manifest.source_ids) if served is not None else 10_000
    for field in ("remove", "weights"):
        v = obj.get(field)
        if isinstance(v, list | dict) and len(v) > n:
            raise invalid(field, f"at most {n} source ids (the store's sources), got {len(v)}")


def checked_route(shape: Callable[[object, object, Settings], None]) -> type[APIRoute]:
    """An ``APIRoute`` class whose JSON body is parsed and ``shape``-checked
    (module doc) before FastAPI validates it; use as ``APIRouter(route_class=...)``."""

    class CheckedRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def checked(request: Request):
                raw = await request.body()
                if raw:
                    rt = getattr(request.app.state, "rt", None)
                    served, s = (rt.served if rt is not None else None), request.app.state.settings

                    def work():
                        obj = parse(raw)
                        shape(obj, served, s)
                        return obj

                    request._json = await asyncio.to_thread(work) if len(raw) > BIG_BODY else work()
                return await handler(request)

            return checked

    return CheckedRoute
