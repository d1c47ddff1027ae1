"""A plugin's site-config section, from what Harvester's queue config gave it.

Harvester passes every key of a plugin's queue-config section as a constructor kwarg
(``PluginFactory``), so a plugin may carry its settings three ways: a section object (our
own daemon hands these over), a mapping written inline in the queue config, or a
``siteConfig`` path to one of our YAML files.  One reader serves every plugin and section
so they validate the same way.
"""

from __future__ import annotations

from typing import Any


def section_of(plugin: Any, name: str) -> Any:
    """The ``name`` section (``storage``, ``hpc``, …) the plugin was configured with, validated."""
    from compass_pilot.config import SiteConfig, build_section, load_site_config, validate

    default = getattr(SiteConfig(), name)
    section_cls = type(default)
    value = getattr(plugin, name, None)
    if isinstance(value, section_cls):
        return value
    if isinstance(value, dict):
        section = build_section(section_cls, value, name, "queue config")
        return getattr(validate(SiteConfig(**{name: section}, source="queue config")), name)
    path = getattr(plugin, "siteConfig", None)
    if path:
        return getattr(load_site_config(path), name)
    return default
