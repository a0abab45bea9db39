"""Task metrics, offline: GLUE (``pst.metrics.glue``) and NLG (``pst.metrics.nlg``)."""
