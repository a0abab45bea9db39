"""One run -> one results record: GLUE (``pst.repro.runners.glue``) and NLG (``pst.repro.runners.nlg``)."""
