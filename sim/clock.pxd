# Cython declarations for sim/clock.py (read only when the compiled engine is built: see accel/).
# They fix the attributes' C types; the .py file stays the one source of the code.

cdef class Due:
    cdef public list callbacks

cdef class Clock:
    cdef public double now
    cdef public list heap
    cdef public object _order
    cpdef at(self, double t, object event)
    cpdef Due later(self, double delay, object callback)
    cpdef step(self)
    cpdef run_due(self, double t)
