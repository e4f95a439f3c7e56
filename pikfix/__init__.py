"""Pik-Fix: restore and colourize old photographs (Xu et al., WACV 2023).

The model library: networks, training, retrieval, metrics and image I/O. It imports neither
Celery nor the database, so it can be used on its own.
"""

__version__ = "0.1.0"
