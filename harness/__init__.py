"""score-eval: measure and train intrinsic self-correction of language models."""

__version__ = "0.1.0"
