"""The mapping engine: YAML mappings loaded, checked and compiled once (Jinja2 templates, JMESPath reads, adapters)."""
