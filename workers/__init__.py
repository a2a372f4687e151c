"""The work itself, one subpackage per concern, each with a small public face (its ``__all__``):
``dispatch`` (event intake and batching), ``inference`` (decoding, the batch engine, model
runtimes), ``training`` (retrain, evaluation, reports, optimization, label issues), ``review``
(the queue and decisions) and ``export`` (labels out as a manifest, CSV or image folder).
Nothing here knows Celery or the web framework; TensorFlow is imported only when a model is
built or loaded (after fork)."""
