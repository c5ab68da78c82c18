"""The web product: the Gradio playground and the OpenAI-compatible speech API over one engine."""
