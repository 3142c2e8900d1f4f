"""Model-backed reward terms: rewards scored by a model from config (a VLM on ``obs["rgb"]``)."""
