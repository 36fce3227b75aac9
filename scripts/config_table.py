"""Print the configuration reference (a Markdown table) from riveg.core.config.Settings.

The README's table is this script's output; tests/test_docs.py fails when they differ.
"""

from __future__ import annotations

from pydantic import BaseModel, SecretStr

from riveg.core.config import SECTIONS, Settings
from riveg.core.stages import STAGE_TABLE


def _default(section: str, name: str, field) -> str:  # type: ignore[no-untyped-def]
    if section in STAGE_TABLE and name == "addr":
        return f"`{STAGE_TABLE[section].default_addr}`"
    if section in STAGE_TABLE and name == "backend":
        return f"`{STAGE_TABLE[section].backend}`"
    if field.default_factory is not None:
        return "see meaning"
    if field.default is None:
        return "unset"
    value = field.default
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return f"`{value}`"


def config_table() -> str:
    """Markdown rows: variable, TOML key, default, meaning."""
    rows = ["| variable | TOML | default | meaning |", "| --- | --- | --- | --- |"]
    for section in SECTIONS:
        model: type[BaseModel] = Settings.model_fields[section].annotation  # type: ignore[assignment]
        for name, field in model.model_fields.items():
            rows.append(
                f"| `RIVEG_{section.upper()}_{name.upper()}` | `[{section}] {name}` | "
                f"{_default(section, name, field)} | {field.description or ''} |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    print(config_table())
