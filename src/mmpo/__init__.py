"""mmpo: fine-grained, vision-aware preference optimization for multimodal LLMs."""

__version__ = "0.1.0"
