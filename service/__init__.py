"""The photo-restoration service's own plumbing: settings, the webhook address policy and the ``pikfix`` CLI.

The model library (``pikfix``) knows none of it; the service passes limits and credentials in.
"""
