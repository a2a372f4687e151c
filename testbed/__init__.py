"""Process and service helpers shared by the tests and the benchmarks.

Plain functions and classes (no pytest fixtures): a private redis-server or moto S3 server on a
free loopback port (:mod:`testbed.services`), ``labeler`` worker and CLI processes started as a
user starts them (:mod:`testbed.processes`), waiting for a state with a deadline
(:mod:`testbed.waiting`), bucket events as MinIO and AWS send them (:mod:`testbed.events`), and
the small digits model and data set both train on (:mod:`testbed.digits`).
"""
