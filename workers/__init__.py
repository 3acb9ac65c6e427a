"""Background embedding on Celery: ``celery_app`` (configuration) and ``tasks`` (thin, ids in)."""
