"""Who reviews a bot or archive source, for the links beside it in the admin."""

from __future__ import annotations

from typing import Any

from django import template

from apps.audit import selectors

register = template.Library()


@register.simple_tag
def officers_assigned(target: Any) -> list[Any]:
    return list(selectors.officers_assigned_to(target=target))
