"""The Gradio dashboard: components and wiring only; the work is done in ``spectrum``."""
