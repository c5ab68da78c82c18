"""S2 Pro inference engine: model, codec, prompt, sampler and the serving core (no web code)."""
