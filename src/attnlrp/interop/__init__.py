"""Interoperability with other tools: Zennit composites (``zennit``) and LXT code (``lxt``, public as
``attnlrp.compat``)."""
