"""One module (or package) per model service; each exposes `build(name, args)`."""
