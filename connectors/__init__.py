"""Connectors: projectors from encoder space to LLM space (``mmpretrain.connectors``)."""
