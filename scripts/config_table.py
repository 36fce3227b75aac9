"""Print the configuration reference (a Markdown table) from riveg.core.config.Settings.

The README's table is this script's output; tests/test_docs.py fails when they differ.
"""

from __future__ import annotations

from riveg.core.config import Settings


def config_table() -> str:
    """Markdown rows: variable, default, meaning."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = "see meaning"
        else:
            default = "unset" if field.default is None else f"`{field.default}`"
        rows.append(f"| `RIVEG_{name.upper()}` | {default} | {field.description or ''} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(config_table())
