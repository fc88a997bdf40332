"""Names that reach the file system or the Hub: category names, repo ids and repo-id patterns.

Everything here runs before anything touches disk or the network, so a bad name fails with a message
naming the value and the rule instead of writing somewhere unexpected.
"""

from __future__ import annotations

import os
import re
import string
from typing import Any

from huggingface_hub.utils import HFValidationError
from huggingface_hub.utils import validate_repo_id as _hub_validate_repo_id

from ..errors import ArgumentError

# Fields a repo-id pattern may use, e.g. "{org}/anomclip-{dataset}-{category}-{shots}shot".
REPO_ID_FIELDS = ("org", "dataset", "category", "shots", "seed")


# A category name becomes a folder name (grid jobs), a PEFT adapter and module name (torch forbids '.') and
# part of repo ids.
_CATEGORY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,95}")


def validate_category_name(name: Any) -> str:
    """Return `name` if it is a safe category name, else raise ArgumentError saying what is allowed."""
    if not isinstance(name, str) or not _CATEGORY_NAME.fullmatch(name):
        raise ArgumentError(f"category name {name!r} is not allowed: expected 1-96 letters, digits, '_' or '-', "
                         "starting with a letter or digit (e.g. 'metal_nut')")
    return name


def validate_repo_id(repo_id: Any) -> str:
    """Return `repo_id` if it is a valid Hub repo id ('name' or 'owner/name'), else raise ArgumentError."""
    if not isinstance(repo_id, str) or not repo_id:
        raise ArgumentError(f"Hub repo id {repo_id!r} is not valid: expected 'owner/name'")
    try:
        _hub_validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ArgumentError(f"Hub repo id {repo_id!r} is not valid: {error}") from None
    return repo_id


def looks_like_local_path(value: str) -> bool:
    """True for strings only a path can be (so they are never sent to the Hub as a repo id)."""
    return (os.path.isabs(value) or value.startswith(("./", "../", "~")) or value in (".", "..")
            or "\\" in value or value.count("/") > 1)


def repo_id_from_pattern(pattern: str, **fields: Any) -> str:
    """Fill a repo-id pattern such as "{org}/anomclip-{dataset}-{category}-{shots}shot" and validate it.

    Category names keep their underscores (valid in repo ids); the result must be a valid repo id.
    """
    used = sorted(pattern_fields(pattern))
    unknown = sorted(set(used) - set(REPO_ID_FIELDS))
    if unknown:
        raise ArgumentError(f"repo-id pattern {pattern!r} uses unknown field(s) {unknown}; "
                         f"known fields: {', '.join('{' + f + '}' for f in REPO_ID_FIELDS)}")
    missing = [name for name in used if fields.get(name) in (None, "")]
    if missing:
        hint = " (pass --hub-org)" if "org" in missing else ""
        raise ArgumentError(f"repo-id pattern {pattern!r} needs a value for {missing}{hint}")
    if "category" in used:
        validate_category_name(fields["category"])
    return validate_repo_id(pattern.format(**{name: fields[name] for name in used}))


def pattern_fields(pattern: str) -> set[str]:
    """The {fields} a repo-id pattern uses."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    except ValueError as error:  # e.g. an unclosed "{org"
        raise ArgumentError(f"repo-id pattern {pattern!r} is malformed: {error}") from None
