"""Interoperability with other tools: Zennit composites (``zennit``), LXT code (``lxt``, public as
``attnlrp.compat``), AttnLRP and CP-LRP as Captum attribution methods (``captum``) and as Inseq methods
(``inseq``, registered on import). Each module loads only when imported, so its tool stays optional."""
