"""Triton models as templates (`templates/`), the tool that fills them (`fill.py`) and the
launcher of the real tritonserver (`serve.py`)."""
