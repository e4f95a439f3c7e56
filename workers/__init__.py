"""Celery app and tasks: they move bytes and rows and call the ``pikfix`` library."""
