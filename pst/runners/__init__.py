"""One run -> one results record: GLUE (``pst.runners.glue``) and NLG (``pst.runners.nlg``)."""
