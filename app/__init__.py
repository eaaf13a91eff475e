"""The LoRA Arena web app (Gradio): one small module per tab, one engine passed in."""
