"""Python models of a Triton repository (imported only inside tritonserver's Python backend)."""
