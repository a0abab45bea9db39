"""Task metrics, offline: GLUE (``pst.repro.metrics.glue``) and NLG (``pst.repro.metrics.nlg``)."""
