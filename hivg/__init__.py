"""HiVG visual grounding: model, data and training in plain PyTorch; orchestration on Ray."""
__version__ = "0.1.0"
