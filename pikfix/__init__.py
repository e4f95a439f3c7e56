"""Pik-Fix: restore and colourize old photographs (Xu et al., WACV 2023).

The model library: networks, training, retrieval, metrics and image I/O. It reads no settings and imports
neither Celery, the database nor the object store, so it can be used on its own.
"""

__version__ = "0.1.0"
