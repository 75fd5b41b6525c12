"""Flux LoRA: multi-GPU preprocessing (`preprocess.py`) and DDP training (`train.py`), composed
through Ray Serve handles; `data.py` is the file format between them."""
