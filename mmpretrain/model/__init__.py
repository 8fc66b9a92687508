"""Model assembly: LLM builders and (later) the MultimodalLM."""
