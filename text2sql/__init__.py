"""text2sql: fine-tune an open LLM to write SQL for your own Iceberg lakehouse.

Stages, read in order: catalog -> data -> prompt -> train -> generate -> evaluate -> serve.
"""

__version__ = "0.1.0"
