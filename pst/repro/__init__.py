"""The reproduction machinery: data, metrics, tiny models, runners, profiles, records and the report.

``import pst`` never loads it; the notebooks and ``reproduce.py`` do. The flow runs one way:
profile (``profiles``) -> runner (``runners``) -> one JSON record per run (``results``) -> report.
"""
