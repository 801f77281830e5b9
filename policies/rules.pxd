# Cython declarations for policies/rules.py (read only when the compiled engine is built: see accel/): the view
# every system fills is an extension type, so the fast engine's own attributes can have C types; a __dict__ keeps
# the view's lists and every subclass's attributes as they are.

cdef class ServingView:
    cdef dict __dict__
