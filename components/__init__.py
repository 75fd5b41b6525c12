"""Model parts shared by services: tokenizers built in memory, text encoders, VAEs, the safety
checker, language models. Each part has `tiny` and `full` presets beside its real loading code.

A component never imports a service (`deployments/`), and the framework (`serve_app/`) never
imports a component: services compose them.
"""
