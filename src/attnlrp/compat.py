"""``attnlrp.compat``: the LXT compatibility layer (``attnlrp.interop.lxt``) under its public name."""

import sys

from .interop import lxt

sys.modules[__name__] = lxt
