"""What the REST API accepts: input the database cannot hold is refused with 400 here,
once for every view, instead of failing in PostgreSQL (500).

A module of its own because DRF reads the parser and pagination classes while it
defines its views: this must not import rest_framework.views (core/api.py does).
"""

from __future__ import annotations

from typing import Any

from rest_framework import parsers, serializers
from rest_framework.exceptions import ParseError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request

# PostgreSQL cannot store NUL in text or jsonb; DRF's CharField says the same in these words.
NUL_MESSAGE = "Null characters are not allowed."


def nul_location(value: Any, where: str = "") -> str | None:
    """Where the first NUL character of a parsed body is (`name`, `models[0]`, `tenants.x`),
    "" for a bare string, None when there is none. Keys count too: dict fields keep them."""
    if isinstance(value, str):
        return where if "\x00" in value else None
    if hasattr(value, "lists"):  # a QueryDict (form and multipart bodies): every value of every key
        value = {key: items[0] if len(items) == 1 else items for key, items in value.lists()}
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{where}.{key}" if where else str(key)
            if "\x00" in str(key):
                return here.replace("\x00", "\\x00")
            found = nul_location(item, here)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = nul_location(item, f"{where}[{index}]")
            if found is not None:
                return found
    return None


class _RefusesNul:
    """Every body is checked once, as parsed, whatever field later reads it (slug lookups,
    choices, JSON and dict fields do not check for NUL themselves): PostgreSQL stores no
    NUL, in text or in jsonb."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        parsed = super().parse(stream, media_type, parser_context)  # type: ignore[misc]
        where = nul_location(parsed.data if isinstance(parsed, parsers.DataAndFiles) else parsed)
        if where is not None:
            raise ParseError(f"{NUL_MESSAGE} Found one in {where or 'the body'}.")
        return parsed


class JSONParser(_RefusesNul, parsers.JSONParser):
    pass


class FormParser(_RefusesNul, parsers.FormParser):
    pass


class MultiPartParser(_RefusesNul, parsers.MultiPartParser):
    pass


# --- Pages ------------------------------------------------------------------------------

MAX_PAGE = 1000
_LIMIT = serializers.IntegerField(min_value=1, max_value=MAX_PAGE)
# PostgreSQL's OFFSET is a bigint.
_OFFSET = serializers.IntegerField(min_value=0, max_value=2**63 - 1)


class Pagination(LimitOffsetPagination):
    """limit/offset pages. A limit or offset that is not an integer in range is refused
    (400) instead of being replaced by the default (DRF's way) or sent to PostgreSQL."""

    max_limit = MAX_PAGE

    def get_limit(self, request: Request) -> int:
        return _query_int(request, self.limit_query_param, _LIMIT, self.default_limit)

    def get_offset(self, request: Request) -> int:
        return _query_int(request, self.offset_query_param, _OFFSET, 0)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        bounds = {self.limit_query_param: _LIMIT, self.offset_query_param: _OFFSET}
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            field = bounds[parameter["name"]]
            parameter["schema"].update(minimum=field.min_value, maximum=field.max_value)
        return parameters


def _query_int(request: Request, name: str, field: serializers.IntegerField, default: int | None) -> Any:
    value = request.query_params.get(name, "")
    if value == "":  # absent, or empty as a form sends it
        return default
    try:
        return field.run_validation(value)
    except serializers.ValidationError as exc:
        raise serializers.ValidationError({name: exc.detail}) from exc


class StrictSerializer(serializers.Serializer):
    """A nested settings object that refuses fields it does not know (a typo must not be
    silently ignored: serving profiles, engine settings)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["unknown field"] for name in unknown})
        return super().to_internal_value(data)
